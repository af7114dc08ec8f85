//! Named failpoints: kill the process at an exact point of the code.
//!
//! The mechanism lives in [`ferry_core::failpoint`], so product code can
//! call it (product crates never depend on this kit); it is re-exported
//! here for tests, which arm failpoints in the processes they start:
//!
//! ```text
//! Command::new(FERRY)
//!     .env(FAILPOINTS_ENV, env_value(&[FailpointSpec::new(GROUP_COMMITTED, 3)]))
//! ```
//!
//! See [`ferry_core::failpoint`] for the format of [`FAILPOINTS_ENV`], the
//! names product code calls ([`ALL`]) and what a hit does (abort the
//! process: a `kill -9` at an exact place).

pub use ferry_core::failpoint::{
    ALL, FAILPOINTS_ENV, FailpointSpec, GROUP_COMMITTED, GROUP_EXECUTED, LARGE_TXN_PART_APPLIED,
    SNAPSHOT_CHUNK_COMMITTED, SNAPSHOT_CHUNK_LOADED, any_armed, armed_in_env, env_value, failpoint,
    parse_failpoints,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a child process (see the next test); a no-op when the
    /// environment does not arm `testkit_child`.
    #[test]
    fn failpoint_child() {
        if std::env::var(FAILPOINTS_ENV).is_err() {
            return;
        }
        failpoint("testkit_child");
        println!("survived hit 1");
        failpoint("some_other_point");
        failpoint("testkit_child");
        println!("survived hit 2");
    }

    #[cfg(unix)]
    #[test]
    fn failpoint_aborts_the_process_on_the_nth_hit() {
        use std::os::unix::process::ExitStatusExt;
        let run = |spec: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "failpoint::tests::failpoint_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(FAILPOINTS_ENV, spec)
                .output()
                .unwrap()
        };
        let out = run("testkit_child=2");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
        assert!(stdout.contains("survived hit 1"), "{stdout}");
        assert!(!stdout.contains("survived hit 2"), "{stdout}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("ferry failpoint \"testkit_child\": hit 2"),
            "{stderr}"
        );

        let out = run("unrelated");
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("survived hit 2"));
    }
}
