//! CA and serving certificate generation: the `certs` subcommand, `serve`'s development
//! certificate, and the tests' certificates all come from [`generate`].
//!
//! Always a CA plus a leaf signed by it, never a self-signed leaf: the CA goes into the
//! webhook configuration's `caBundle`, so a new leaf from the same CA rotates without touching
//! the configuration (a self-signed leaf used as its own bundle breaks on every rotation).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Days a generated CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Backdating of `notBefore`, for nodes whose clocks run a little behind.
const CLOCK_SKEW: Duration = Duration::hours(1);

#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Folder to write `ca.crt`, `ca.key`, `tls.crt` and `tls.key` into (created if missing).
    #[arg(long, env = "JRW_CERTS_OUT_DIR", default_value = "certs")]
    pub out_dir: PathBuf,
    /// Name of the webhook's Service.
    #[arg(
        long,
        env = "JRW_CERTS_SERVICE",
        default_value = "jobset-restart-webhook"
    )]
    pub service: String,
    /// Namespace of the webhook's Service.
    #[arg(
        long,
        env = "JRW_CERTS_NAMESPACE",
        default_value = "jobset-restart-webhook"
    )]
    pub namespace: String,
    /// Extra DNS name or IP address for the serving certificate (repeatable).
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// Days the serving certificate is valid (the CA is valid for ten years).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub validity_days: i64,
}

/// A CA and a serving certificate signed by it, all PEM.
#[derive(Clone)]
pub struct Generated {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The serving certificate's names (DNS names and IP addresses).
    pub sans: Vec<String>,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Generated {
    // Never print keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated")
            .field("sans", &self.sans)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Generated {
    /// The CA bundle as the webhook configuration's `caBundle` wants it.
    pub fn ca_bundle_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes())
    }
}

/// The names a serving certificate for `<service>.<namespace>` needs in cluster, plus
/// `localhost` and `127.0.0.1` for local runs, plus `extra`; without duplicates.
pub fn default_names(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    for name in extra {
        let name = name.trim();
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Generates a CA (ECDSA P-256, ten years) and a serving certificate for `names` (DNS names
/// or IP addresses) valid for `validity_days`.
pub fn generate(names: &[String], validity_days: i64) -> anyhow::Result<Generated> {
    if names.is_empty() {
        bail!("a serving certificate needs at least one DNS name or IP address");
    }
    let now = OffsetDateTime::now_utc();

    let mut ca_params = CertificateParams::default();
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, "jobset-restart-webhook CA");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - CLOCK_SKEW;
    ca_params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf_params = CertificateParams::new(names.to_vec())
        .with_context(|| format!("invalid certificate names {names:?}"))?;
    let mut leaf_dn = DistinguishedName::new();
    // The Service name (`<svc>.<ns>.svc`) when there is one, else the first name.
    let cn = names
        .iter()
        .find(|n| n.ends_with(".svc"))
        .or(names.first())
        .map_or("localhost", String::as_str);
    leaf_dn.push(DnType::CommonName, cn);
    leaf_params.distinguished_name = leaf_dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = now - CLOCK_SKEW;
    let not_after = now + Duration::days(validity_days.clamp(1, CA_VALIDITY_DAYS));
    leaf_params.not_after = not_after;
    let leaf_key = KeyPair::generate().context("generating the serving key")?;
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .context("signing the serving certificate")?;

    Ok(Generated {
        ca_pem,
        ca_key_pem,
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        sans: names.to_vec(),
        not_after,
    })
}

/// Writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key` into `dir` (keys mode 0600). Each file
/// is written to a temporary name and renamed, so a server watching them never reads half.
pub fn write_files(dir: &Path, g: &Generated) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("ca.crt"), g.ca_pem.as_bytes(), false)?;
    write_atomic(&dir.join("ca.key"), g.ca_key_pem.as_bytes(), true)?;
    // Key before certificate: a watcher that sees the new key with the old certificate
    // rejects the pair and keeps serving; the next poll sees both.
    write_atomic(&dir.join("tls.key"), g.key_pem.as_bytes(), true)?;
    write_atomic(&dir.join("tls.crt"), g.cert_pem.as_bytes(), false)?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        // `mode` applies only when the file is created; a left-over temp file keeps its mode.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = if secret { 0o600 } else { 0o644 };
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    }
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    if args.service.trim().is_empty() || args.namespace.trim().is_empty() {
        bail!("--service and --namespace must not be empty");
    }
    let names = default_names(args.service.trim(), args.namespace.trim(), &args.dns_names);
    let generated = generate(&names, args.validity_days)?;
    write_files(&args.out_dir, &generated)?;
    let dir = args.out_dir.display();
    eprintln!(
        "wrote {dir}/ca.crt, {dir}/ca.key, {dir}/tls.crt and {dir}/tls.key\n\
         serving certificate for {} (valid until {}); CA valid for {CA_VALIDITY_DAYS} days\n\
         serve with: --tls-cert {dir}/tls.crt --tls-key {dir}/tls.key\n\
         the base64 CA bundle for the webhook configuration's caBundle is on standard output",
        names.join(", "),
        generated.not_after.date(),
    );
    println!("{}", generated.ca_bundle_base64());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_cover_the_service_and_localhost_without_duplicates() {
        let names = default_names("svc", "ns", &["localhost".into(), " extra.example ".into()]);
        assert_eq!(
            names,
            [
                "svc",
                "svc.ns",
                "svc.ns.svc",
                "svc.ns.svc.cluster.local",
                "localhost",
                "127.0.0.1",
                "extra.example"
            ]
        );
    }

    #[test]
    fn generated_leaf_is_signed_by_the_ca_and_names_its_sans() {
        let g = generate(&default_names("svc", "ns", &[]), 30).expect("generate");
        let (_, ca) = x509_parser::pem::parse_x509_pem(g.ca_pem.as_bytes()).expect("ca pem");
        let ca = ca.parse_x509().expect("ca der");
        let (_, leaf) = x509_parser::pem::parse_x509_pem(g.cert_pem.as_bytes()).expect("leaf pem");
        let leaf = leaf.parse_x509().expect("leaf der");
        assert!(ca.is_ca());
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
        verify_with_rustls(&g, "svc.ns.svc");
        verify_with_rustls(&g, "127.0.0.1");
        let sans = leaf
            .subject_alternative_name()
            .expect("san ext")
            .expect("san present");
        assert_eq!(sans.value.general_names.len(), 6);
        let days = (leaf.validity().not_after.timestamp()
            - OffsetDateTime::now_utc().unix_timestamp())
            / 86400;
        assert!((29..=30).contains(&days), "{days}");
    }

    fn verify_with_rustls(g: &Generated, name: &str) {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(g.ca_pem.as_bytes()).expect("ca"))
            .expect("add root");
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("verifier");
        let leaf = CertificateDer::from_pem_slice(g.cert_pem.as_bytes()).expect("leaf");
        let server_name = ServerName::try_from(name.to_owned()).expect("name");
        verifier
            .verify_server_cert(&leaf, &[], &server_name, &[], UnixTime::now())
            .expect("the leaf verifies against the CA");
    }
}
