//! The [`Sink::fence`] contract as one test, run against every sink.

use ferry_core::{ErrorClass, Sink};

/// Checks the fence contract: `open(pipeline)` must open a new sink of
/// `pipeline` on one and the same target each time, as a separate runner
/// would (a new connection, a new file handle); panics naming the first
/// broken rule.
///
/// What it checks: a fence is taken and taking it again on the same sink
/// succeeds; a second sink of the same pipeline is refused with a fatal
/// error that names the pipeline and carries a fix; a sink of another
/// pipeline on the same target is not affected; once the holder is
/// dropped, the second sink takes the fence (within the few seconds the
/// contract allows a holder to go).
pub async fn fence_conformance(open: impl AsyncFn(&str) -> Box<dyn Sink>) {
    let first = open("fenced").await;
    first
        .fence()
        .await
        .unwrap_or_else(|e| panic!("fence conformance: the first fence must be taken: {e:?}"));
    first.fence().await.unwrap_or_else(|e| {
        panic!("fence conformance: fencing the same sink again must succeed: {e:?}")
    });

    let second = open("fenced").await;
    match second.fence().await {
        Ok(()) => panic!("fence conformance: a second sink of the pipeline took the fence"),
        Err(e) => {
            assert_eq!(
                e.class(),
                ErrorClass::Fatal,
                "fence conformance: a refused fence is fatal: {e:?}"
            );
            assert!(
                e.message().contains("fenced") && e.fix().is_some(),
                "fence conformance: a refused fence names the pipeline and says what to do: \
                 {e:?}"
            );
        }
    }

    let other = open("other_pipeline").await;
    other.fence().await.unwrap_or_else(|e| {
        panic!("fence conformance: another pipeline's fence is independent: {e:?}")
    });

    drop(first);
    second.fence().await.unwrap_or_else(|e| {
        panic!("fence conformance: once its holder is gone the fence must be free: {e:?}")
    });
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::doubles::{FaultySink, MemorySink, RecordingSink};

    type Targets = Mutex<HashMap<String, MemorySink>>;

    /// A new runner's handle on the memory target of `pipeline` (one
    /// target per pipeline name).
    fn open(targets: &Targets, pipeline: &str) -> MemorySink {
        let mut t = targets.lock().unwrap();
        t.entry(pipeline.to_owned())
            .or_insert_with(|| MemorySink::named(pipeline))
            .reopen()
    }

    #[tokio::test]
    async fn memory_sink_fences() {
        let targets = Targets::default();
        fence_conformance(async |p: &str| Box::new(open(&targets, p)) as Box<dyn Sink>).await;
    }

    #[tokio::test]
    async fn wrappers_pass_the_fence_through() {
        let targets = Targets::default();
        fence_conformance(async |p: &str| {
            Box::new(FaultySink::new(RecordingSink::new(open(&targets, p)))) as Box<dyn Sink>
        })
        .await;
    }

    #[tokio::test]
    async fn clones_are_one_runner_and_the_last_one_releases() {
        let sink = MemorySink::new();
        let clone = sink.clone();
        sink.fence().await.unwrap();
        clone.fence().await.unwrap();
        let other = sink.reopen();
        assert!(other.fence().await.is_err());
        drop(sink);
        assert!(other.fence().await.is_err(), "a clone still holds it");
        drop(clone);
        other.fence().await.unwrap();
        assert!(other.fenced());
    }
}
