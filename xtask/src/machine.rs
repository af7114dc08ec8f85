//! What a reader needs to compare figures: the machine, the SQLite version,
//! the ferry commit.

use std::path::Path;
use std::process::Command;

use crate::Res;

pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub kernel: String,
    pub mem_gib: f64,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        // Same as `uname -r`.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0.0);
        Machine {
            // Same as `nproc`.
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            model,
            kernel,
            mem_gib: mem_kib / 1024.0 / 1024.0,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} CPUs (`nproc`), {}, {:.0} GiB RAM, Linux {}",
            self.cpus, self.model, self.mem_gib, self.kernel
        )
    }
}

/// `sqlite3 --version`, or an install hint.
pub fn sqlite3_cli_version() -> Res<String> {
    let out = Command::new("sqlite3")
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "the sqlite3 command is needed for the `.dump` baseline ({e}); \
             install it: apt-get install sqlite3"
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or("unknown")
        .to_owned())
}

/// `git rev-parse --short HEAD`, marked when the work tree has changes
/// (figures then describe uncommitted code).
pub fn git_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    match git(&["status", "--porcelain"]) {
        Some(s) if !s.is_empty() => format!("{head} + uncommitted changes"),
        _ => head,
    }
}
