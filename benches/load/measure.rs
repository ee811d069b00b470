//! One measured run, the saturation rounds and the bodies.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::stats::median;

use crate::bodies;
use crate::client::{self, Run, Target};
use crate::processes::Server;
use crate::procfs::*;

#[derive(Clone, Copy)]
pub enum Load {
    Saturate,
    Rate(f64),
    Fresh,
}

/// One run with the CPU it cost on both sides.
pub struct Measured {
    pub run: Run,
    pub wall: f64,
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// Busy share of core 0 / core 1 not due to the server / the client (other jobs).
    pub foreign: [f64; 2],
}

impl Measured {
    pub fn us(&self, q: f64) -> f64 {
        self.run.latency.value_at_quantile(q) as f64 / 1000.0
    }
    /// Server CPU per answered request (warm-up included on both sides), µs.
    pub fn cpu_per_req(&self) -> f64 {
        self.server_cpu / (self.run.all.max(1) as f64) * 1e6
    }
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.run.ok, "errors": self.run.errors, "first_error": self.run.first_error,
            "req_per_s": self.run.throughput(),
            "p50_us": self.us(0.5), "p99_us": self.us(0.99), "p999_us": self.us(0.999),
            "max_us": self.run.latency.max() as f64 / 1000.0,
            "send_lateness_p99_us": self.run.lateness.value_at_quantile(0.99) as f64 / 1000.0,
            "server_cpu_us_per_req": self.cpu_per_req(),
            "server_core_util": self.server_cpu / self.wall,
            "client_core_util": self.client_cpu / self.wall,
            "foreign_core0": self.foreign[0], "foreign_core1": self.foreign[1],
        })
    }
}

pub struct Bench {
    pub rt: tokio::runtime::Runtime,
    pub ca_pem: String,
    pub warmup: Duration,
    pub secs: Duration,
    pub lat_secs: Duration,
    pub rounds: usize,
    pub log: Vec<Value>,
}

impl Bench {
    pub fn measure(&mut self, server: &Server, body: &Body, conns: usize, load: Load) -> Measured {
        let target = Target::new(server.addr, &self.ca_pem);
        let req = client::request_bytes(server.addr, server.req_path, &body.json);
        let (s0, c0, k0, t0) = (
            cpu_secs(server.pid()),
            cpu_secs(std::process::id()),
            cores(),
            Instant::now(),
        );
        let run = self
            .rt
            .block_on(async {
                match load {
                    Load::Saturate => {
                        client::saturate(&target, req, conns, self.warmup, self.secs).await
                    }
                    Load::Rate(r) => {
                        let warm = self.warmup.min(Duration::from_millis(300));
                        client::fixed_rate(&target, req, conns, r, warm, self.lat_secs).await
                    }
                    Load::Fresh => client::fresh(&target, req, conns, self.warmup, self.secs).await,
                }
            })
            .unwrap_or_else(|e| panic!("{} on {}: {e}", server.name, body.name));
        let wall = t0.elapsed().as_secs_f64();
        let (server_cpu, client_cpu, k1) = (
            cpu_secs(server.pid()) - s0,
            cpu_secs(std::process::id()) - c0,
            cores(),
        );
        let share = |i: usize, ours: f64| {
            let (busy, total) = (k1[i].0 - k0[i].0, k1[i].1 - k0[i].1);
            if total <= 0.0 {
                0.0
            } else {
                ((busy / CLK_TCK - ours) / (total / CLK_TCK)).max(0.0)
            }
        };
        let m = Measured {
            foreign: [share(0, server_cpu), share(1, client_cpu)],
            run,
            wall,
            server_cpu,
            client_cpu,
        };
        if m.run.errors > 0 {
            eprintln!(
                "load: {} {} c={conns}: {} errors, first: {}",
                server.name,
                body.name,
                m.run.errors,
                m.run.first_error.as_deref().unwrap_or("?")
            );
        }
        let (kind, rate) = match load {
            Load::Saturate => ("saturate", None),
            Load::Rate(r) => ("rate", Some(r)),
            Load::Fresh => ("fresh", None),
        };
        let mut j = m.to_json();
        j["server"] = json!(server.name);
        j["body"] = json!(body.name);
        j["bytes"] = json!(body.json.len());
        j["conns"] = json!(conns);
        j["load"] = json!(kind);
        j["rate"] = json!(rate);
        self.log.push(j);
        m
    }

    /// Saturation in rounds alternating `servers`; per server the median throughput, the
    /// per-round ratios to each server, and the median CPU per request.
    pub fn saturate(&mut self, servers: &[&Server], body: &Body, conns: usize) -> Sat {
        let mut per: Vec<Vec<Measured>> = servers.iter().map(|_| Vec::new()).collect();
        for _ in 0..self.rounds {
            for (i, s) in servers.iter().enumerate() {
                per[i].push(self.measure(s, body, conns, Load::Saturate));
            }
        }
        let rps: Vec<Vec<f64>> = per
            .iter()
            .map(|ms| ms.iter().map(|m| m.run.throughput()).collect())
            .collect();
        let sat = Sat {
            names: servers.iter().map(|s| s.name).collect(),
            rps: rps.iter().map(|v| median(v.clone())).collect(),
            cpu_us: per
                .iter()
                .map(|ms| median(ms.iter().map(Measured::cpu_per_req).collect()))
                .collect(),
            client_util: per
                .iter()
                .map(|ms| median(ms.iter().map(|m| m.client_cpu / m.wall).collect()))
                .collect(),
            foreign0: per
                .iter()
                .flat_map(|ms| ms.iter().map(|m| m.foreign[0]))
                .fold(0.0, f64::max),
            rounds: rps,
        };
        eprintln!(
            "load: {} c={conns}: {}",
            body.name,
            sat.names
                .iter()
                .zip(&sat.rps)
                .map(|(n, r)| format!("{n} {r:.0}/s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        sat
    }
}

pub struct Sat {
    pub names: Vec<&'static str>,
    /// Median req/s per server.
    pub rps: Vec<f64>,
    /// Per server, per round req/s.
    pub rounds: Vec<Vec<f64>>,
    pub cpu_us: Vec<f64>,
    pub client_util: Vec<f64>,
    pub foreign0: f64,
}

impl Sat {
    pub fn idx(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .expect("server in run")
    }
    pub fn rps_of(&self, name: &str) -> f64 {
        self.rps[self.idx(name)]
    }
    /// b's CPU per request / a's: the throughput ratio a core of its own would give.
    pub fn cpu_ratio(&self, a: &str, b: &str) -> f64 {
        self.cpu_us[self.idx(b)] / self.cpu_us[self.idx(a)]
    }
    /// Median over rounds of (a's req/s / b's req/s) in the same round.
    pub fn ratio(&self, a: &str, b: &str) -> f64 {
        let (a, b) = (&self.rounds[self.idx(a)], &self.rounds[self.idx(b)]);
        median(a.iter().zip(b).map(|(x, y)| x / y).collect())
    }
}

pub struct Body {
    pub name: String,
    pub json: String,
}

pub fn body(name: &str, object: &Value) -> Body {
    Body {
        name: name.to_owned(),
        json: bodies::review(object),
    }
}

pub fn kib(bytes: usize) -> String {
    if bytes < 10 * 1024 {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    } else {
        format!("{:.0} KB", bytes as f64 / 1024.0)
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
