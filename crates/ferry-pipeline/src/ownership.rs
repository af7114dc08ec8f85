//! What a run claims before it touches anything: the target's fence (one
//! runner per pipeline, whatever the source), and a target that is not its
//! own source.
//!
//! Two runners of one pipeline would both apply every change: a table
//! without a key gets each insert twice. The fence lives on the target
//! because the target holds the checkpoint both would advance
//! ([`Sink::fence`]). A target that is the source itself (the same
//! PostgreSQL database reached as `127.0.0.1` and `localhost`, the same
//! SQLite file through `./` or a symbolic link) would capture its own
//! writes and replay them forever; identities ([`Source::identity`],
//! [`Sink::identity`]) name a database however it is reached.

use ferry_core::{Error, Result, Sink, Source};

/// Takes the target's fence, then refuses a source and target that are
/// one database. Called first thing in [`Pipeline::run`](crate::Pipeline::run).
pub(crate) async fn claim(source: &mut dyn Source, sink: &dyn Sink, pipeline: &str) -> Result<()> {
    sink.fence().await?;
    let source_id = source.identity().await?;
    let target_id = sink.identity().await?;
    different_databases(pipeline, source_id.as_deref(), target_id.as_deref())
}

/// A fatal error when `source` and `target` name the same database; `Ok`
/// when they differ or either is unknown. `ferry check` reports it as a
/// failed check item.
pub fn different_databases(
    pipeline: &str,
    source: Option<&str>,
    target: Option<&str>,
) -> Result<()> {
    match (source, target) {
        (Some(s), Some(t)) if s == t => Err(Error::fatal(format!(
            "the source and the target of pipeline {pipeline:?} are the same database ({s}): \
             ferry would capture its own writes and apply them again, forever"
        ))
        .with_fix(
            "point `target.url` at another database (another database of the same PostgreSQL \
             server is fine; another SQLite file, not a link to the source)",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_equal_known_identities_are_refused() {
        let id = "postgres:system=7:database=16384";
        let e = different_databases("shop", Some(id), Some(id)).unwrap_err();
        assert_eq!(e.class(), ferry_core::ErrorClass::Fatal);
        assert!(
            e.message().contains("\"shop\"") && e.message().contains(id),
            "{e}"
        );
        assert!(e.fix().is_some_and(|f| f.contains("target.url")));
        assert!(
            different_databases("shop", Some(id), Some("postgres:system=7:database=5")).is_ok()
        );
        assert!(different_databases("shop", Some(id), None).is_ok());
        assert!(different_databases("shop", None, None).is_ok());
    }
}
