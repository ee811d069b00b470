//! Memory of the watch-backed caches.

use super::*;

/// The pid of the `serve` process started for `webhook` (found by its folder in the command
/// line).
pub(super) fn serve_pid(webhook: &Webhook) -> u32 {
    let dir = webhook.dir.display().to_string();
    for entry in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" serve ") && cmdline.contains(&dir) {
            return pid;
        }
    }
    panic!("no serve process for {dir} in /proc");
}

/// `VmRSS` of `pid`, in KiB.
pub(super) fn rss_kib(pid: u32) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A realistic JobSet: restart annotations on the JobSet and a replicated job, foreign
/// annotations (one of 2 KiB, like kubectl's last-applied-configuration), two replicated
/// jobs with full pod templates.
pub(super) fn big_jobset(i: usize) -> Value {
    let container = |name: &str| {
        json!({"name": name, "image": "trainer:1.0", "command": ["python", "train.py", "--epochs", "100"],
               "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
               "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}})
    };
    let rjob = |name: &str, annotations: Value| {
        json!({"name": name, "replicas": 4, "template": {
            "metadata": {"annotations": annotations},
            "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 0,
                     "template": {"spec": {"containers": [container("trainer"), container("logger")]}}}}})
    };
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": format!("js-{i:04}"), "annotations": {
            "restart.jobset.dev/in-place": "enabled",
            "restart.jobset.dev/on-exit-codes": "42,43,128-143",
            "example.com/owner": "team-ml",
            "example.com/notes": "x".repeat(2048)
        }, "labels": {"team": "ml"}},
        "spec": {"suspend": true, "replicatedJobs": [
            rjob("workers", json!({"restart.jobset.dev/containers": "trainer", "example.com/x": "y"})),
            rjob("driver", json!({}))
        ]}
    })
}

#[test]
pub(super) fn memory_of_the_caches_with_1000_jobsets() {
    let _t = TestTimer::start("memory_of_the_caches_with_1000_jobsets");
    const N: usize = 1000;
    let cluster = Cluster::start(ClusterOptions {
        name: "memory",
        controller_manager: false,
        jobset_controller: false,
        ..ClusterOptions::default()
    });
    let opts = WebhookOptions::targets("jobsets,pods");
    let webhook = Webhook::start(&cluster, opts.clone());
    let pid = serve_pid(&webhook);
    let ns = cluster.namespace("many", &[]);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid);

    let start = Instant::now();
    for chunk in (0..N).collect::<Vec<_>>().chunks(250) {
        let items: Vec<Value> = chunk.iter().map(|&i| big_jobset(i)).collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        cluster.kubectl_ok(
            &["create", "-n", &ns, "-f", "-", "-o", "name"],
            Some(&list.to_string()),
        );
    }
    let created = start.elapsed();
    let objects = "jobset_restart_webhook_cluster_cache_objects{cache=\"jobsets\"}";
    wait_for(
        "the JobSet cache to hold every JobSet",
        CACHE,
        || match webhook.metric(objects) {
            Some(n) if n >= N as f64 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);

    // A second process that finds the 1,000 JobSets at start (one paged list).
    let second = Webhook::start(&cluster, opts);
    let second_pid = serve_pid(&second);
    assert_eq!(
        second.metric(objects),
        Some(N as f64),
        "readiness waited for the list"
    );
    std::thread::sleep(Duration::from_secs(2));
    let second_rss = rss_kib(second_pid);

    let growth = after.saturating_sub(before);
    eprintln!(
        "[e2e] memory: serve RSS {before} KiB before, {after} KiB after {N} JobSets were created \
         and watched (+{growth} KiB, {:.2} KiB per JobSet; creating them took {:.1} s); a \
         second serve that listed the {N} JobSets at start: {second_rss} KiB",
        growth as f64 / N as f64,
        created.as_secs_f64()
    );
    // Regression bound: the cache keeps names and restart annotations only.
    assert!(
        growth < 16 * 1024,
        "the caches grew by {growth} KiB for {N} JobSets"
    );
}
