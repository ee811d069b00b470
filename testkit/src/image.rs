//! The shipped image, built from the Dockerfile by `tests/image/build.sh`, read back from its
//! docker-archive (the `docker save` layout: `manifest.json`, the config JSON and one
//! uncompressed tar per layer). Used by the image test (`tests/image/`) and the load bench's
//! `--image` mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;

use crate::util::{repo_root, report_time};

/// The archive's path from `tests/image/build.sh` (cached by a key of the Dockerfile and the
/// sources; honours `IMAGE_ARCHIVE`). Panics with the script's output when it fails: the
/// tests never skip.
pub fn image_archive() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let start = Instant::now();
        let script = repo_root().join("tests/image/build.sh");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.trim().is_empty(),
            "the image tests need the image: `tests/image/build.sh` failed ({}). It needs root, \
             buildah and debootstrap (installed with apt-get when missing), this machine's Rust \
             toolchain at the Dockerfile's version and the crate registry; or IMAGE_ARCHIVE \
             naming an archive it built. Its log is above; stdout: {stdout}",
            out.status
        );
        let path = PathBuf::from(stdout.trim());
        assert!(
            path.is_file(),
            "tests/image/build.sh printed {}, which is not a file",
            path.display()
        );
        report_time("image archive (tests/image/build.sh)", start.elapsed());
        path
    })
}

/// One member of a tar stream.
#[derive(Clone, Debug)]
pub struct TarEntry {
    pub path: String,
    /// The ustar type flag: b'0' regular file, b'5' directory, b'2' symlink, ...
    pub kind: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link: String,
    pub data: Vec<u8>,
}

impl TarEntry {
    pub fn is_file(&self) -> bool {
        matches!(self.kind, b'0' | 0)
    }
    pub fn is_dir(&self) -> bool {
        self.kind == b'5'
    }
}

fn field_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An octal numeric field, or GNU's base-256 form (high bit of the first byte set).
fn field_num(b: &[u8], what: &str) -> Result<u64, String> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        let mut n: u64 = u64::from(b[0] & 0x7f);
        for &c in &b[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(c)))
                .ok_or_else(|| format!("tar {what} field overflows"))?;
        }
        return Ok(n);
    }
    let s = field_str(b);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|e| format!("tar {what} field {s:?} is not octal: {e}"))
}

/// The records of a PAX extended header (`<len> <key>=<value>\n` each).
fn pax_records(data: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&c| c == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record length is not a number")?;
        let rec = rest
            .get(sp + 1..len)
            .ok_or("PAX record runs past its header")?;
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        let text = String::from_utf8_lossy(rec);
        if let Some((k, v)) = text.split_once('=') {
            out.insert(k.to_owned(), v.to_owned());
        }
        rest = &rest[len..];
    }
    Ok(out)
}

/// Every member of an (uncompressed) tar stream: ustar headers with their checksums checked,
/// PAX (`x`) and GNU long-name (`L`, `K`) headers applied; global PAX headers are skipped.
pub fn read_tar(bytes: &[u8]) -> Result<Vec<TarEntry>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut long_name: Option<String> = None;
    let mut long_link: Option<String> = None;
    let mut pax: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let h = bytes
            .get(pos..pos + 512)
            .ok_or_else(|| format!("tar ends inside a header at byte {pos}"))?;
        if h.iter().all(|&c| c == 0) {
            return Ok(out);
        }
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(c)
                }
            })
            .sum();
        let want = field_num(&h[148..156], "checksum")?;
        if sum != want {
            return Err(format!(
                "tar header at byte {pos}: checksum {want} stored, {sum} computed"
            ));
        }
        let kind = h[156];
        let mut size = field_num(&h[124..136], "size")?;
        if let Some(s) = pax.get("size") {
            size = s
                .parse()
                .map_err(|e| format!("PAX size {s:?} at byte {pos}: {e}"))?;
        }
        let size = usize::try_from(size).map_err(|_| "tar member size overflows".to_owned())?;
        let start = pos + 512;
        let data = start
            .checked_add(size)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| format!("tar member at byte {pos} runs past the end ({size} bytes)"))?;
        pos = start + size.div_ceil(512) * 512;
        match kind {
            b'x' => {
                pax = pax_records(data)?;
                continue;
            }
            b'g' => continue,
            b'L' => {
                long_name = Some(field_str(data));
                continue;
            }
            b'K' => {
                long_link = Some(field_str(data));
                continue;
            }
            _ => {}
        }
        let mut path = field_str(&h[0..100]);
        let prefix = if &h[257..262] == b"ustar" {
            field_str(&h[345..500])
        } else {
            String::new()
        };
        if !prefix.is_empty() {
            path = format!("{prefix}/{path}");
        }
        let mut link = field_str(&h[157..257]);
        if let Some(p) = long_name.take() {
            path = p;
        }
        if let Some(l) = long_link.take() {
            link = l;
        }
        if let Some(p) = pax.remove("path") {
            path = p;
        }
        if let Some(l) = pax.remove("linkpath") {
            link = l;
        }
        pax.clear();
        out.push(TarEntry {
            path,
            kind,
            mode: u32::try_from(field_num(&h[100..108], "mode")? & 0o7777).unwrap_or(0),
            uid: field_num(&h[108..116], "uid")?,
            gid: field_num(&h[116..124], "gid")?,
            link,
            data: data.to_vec(),
        });
    }
}

/// `path` without a leading `./` or `/` and trailing `/`.
pub fn clean_path(path: &str) -> &str {
    let p = path.strip_prefix("./").unwrap_or(path);
    let p = p.strip_prefix('/').unwrap_or(p);
    p.strip_suffix('/').unwrap_or(p)
}

/// An image read from a docker-archive.
pub struct Image {
    /// Size of the archive file.
    pub archive_bytes: u64,
    /// Its single `manifest.json` entry (`Config`, `RepoTags`, `Layers`).
    pub manifest: Value,
    /// The image config (`config.User`, `config.Labels`, ...).
    pub config: Value,
    /// Each layer's members, in order, with the layer tar's size.
    pub layers: Vec<(u64, Vec<TarEntry>)>,
}

impl Image {
    pub fn read(path: &Path) -> Result<Image, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let members = read_tar(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let member = |name: &str| {
            members
                .iter()
                .find(|m| clean_path(&m.path) == clean_path(name) && m.is_file())
                .ok_or_else(|| format!("{} has no member {name}", path.display()))
        };
        let manifests: Value = serde_json::from_slice(&member("manifest.json")?.data)
            .map_err(|e| format!("manifest.json: {e}"))?;
        let manifest = match manifests.as_array().map(Vec::as_slice) {
            Some([one]) => one.clone(),
            _ => {
                return Err(format!(
                    "manifest.json holds not exactly one image: {manifests}"
                ));
            }
        };
        let config_name = manifest["Config"]
            .as_str()
            .ok_or_else(|| format!("manifest.json without Config: {manifest}"))?;
        let config: Value = serde_json::from_slice(&member(config_name)?.data)
            .map_err(|e| format!("{config_name}: {e}"))?;
        let mut layers = Vec::new();
        for l in manifest["Layers"].as_array().into_iter().flatten() {
            let name = l
                .as_str()
                .ok_or_else(|| format!("a layer name is not a string: {l}"))?;
            let data = &member(name)?.data;
            let entries = read_tar(data).map_err(|e| format!("layer {name}: {e}"))?;
            layers.push((data.len() as u64, entries));
        }
        Ok(Image {
            archive_bytes: bytes.len() as u64,
            manifest,
            config,
            layers,
        })
    }

    /// The first word of the config's `Entrypoint`.
    pub fn entrypoint(&self) -> Option<&str> {
        self.config["config"]["Entrypoint"][0].as_str()
    }

    /// The regular file at `path` in the image's file system (the last layer that has it).
    pub fn file(&self, path: &str) -> Option<&TarEntry> {
        self.layers
            .iter()
            .rev()
            .flat_map(|(_, entries)| entries.iter())
            .find(|e| clean_path(&e.path) == clean_path(path) && e.is_file())
    }

    /// Writes the image's file system (the layers in order; whiteouts and links are not
    /// needed by this single-file image and are refused) under `root`.
    pub fn extract(&self, root: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt as _;
        for (_, entries) in &self.layers {
            for e in entries {
                let rel = clean_path(&e.path);
                if rel.is_empty() || rel == "." {
                    continue;
                }
                if rel.split('/').any(|c| c == ".." || c.starts_with(".wh.")) {
                    return Err(format!("layer member {:?} is not supported here", e.path));
                }
                let dest = root.join(rel);
                if e.is_dir() {
                    std::fs::create_dir_all(&dest)
                        .map_err(|err| format!("{}: {err}", dest.display()))?;
                } else if e.is_file() {
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|err| format!("{}: {err}", parent.display()))?;
                    }
                    std::fs::write(&dest, &e.data)
                        .map_err(|err| format!("{}: {err}", dest.display()))?;
                } else {
                    return Err(format!(
                        "layer member {:?} has type {:?}, not a file or folder",
                        e.path, e.kind as char
                    ));
                }
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode))
                    .map_err(|err| format!("{}: {err}", dest.display()))?;
            }
        }
        Ok(())
    }
}

/// The webhook binary of the image at `archive`, written to `dir` (mode 0755); for running
/// it on the host (the load bench's `--image`).
pub fn extract_binary(archive: &Path, dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let image = Image::read(archive)?;
    let entry = image
        .entrypoint()
        .ok_or_else(|| format!("{}: the config has no Entrypoint", archive.display()))?;
    let file = image
        .file(entry)
        .ok_or_else(|| format!("{}: no file at the Entrypoint {entry}", archive.display()))?;
    let dest = dir.join("jobset-restart-webhook-from-image");
    std::fs::write(&dest, &file.data).map_err(|e| format!("{}: {e}", dest.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(dest)
}
