//! The checkpoint table on the target: one row per pipeline and scope,
//! written by a writer in the transaction whose data it covers.

/// The checkpoint table, in schema `public` of the target database.
pub const CHECKPOINT_TABLE: &str = "public._ferry_checkpoint";

/// `CREATE TABLE` for the checkpoint table.
pub(crate) fn create_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (\
           pipeline text NOT NULL, scope text NOT NULL, value text NOT NULL, \
           updated_at timestamptz NOT NULL DEFAULT now(), \
           PRIMARY KEY (pipeline, scope))"
    )
}

/// The upsert of `records` records of one pipeline: `$1` is the pipeline,
/// then come each record's scope and value.
pub(crate) fn upsert_sql(records: usize) -> String {
    let values: Vec<String> = (0..records)
        .map(|n| format!("($1, ${}, ${}, now())", 2 * n + 2, 2 * n + 3))
        .collect();
    format!(
        "INSERT INTO {CHECKPOINT_TABLE} (pipeline, scope, value, updated_at) VALUES {} \
         ON CONFLICT (pipeline, scope) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        values.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upsert_numbers_each_records_scope_and_value_after_the_pipeline() {
        assert_eq!(
            upsert_sql(2),
            "INSERT INTO public._ferry_checkpoint (pipeline, scope, value, updated_at) VALUES \
             ($1, $2, $3, now()), ($1, $4, $5, now()) ON CONFLICT (pipeline, scope) DO UPDATE \
             SET value = EXCLUDED.value, updated_at = now()"
        );
    }
}
