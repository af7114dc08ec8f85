//! The names ferry gives its objects on a PostgreSQL source, from the
//! pipeline's name.
//!
//! The replication slot and the publication are both `ferry_<name>`, and
//! PostgreSQL allows a slot only lower-case letters, digits and `_`, 63
//! bytes at most. A pipeline name (by default its file's name, such as
//! `my-pipe`) becomes `<name>` like this:
//!
//! * a name already made of lower-case letters, digits and `_`, at most
//!   [`MAX_NAME`] bytes, stays as it is (so running pipelines keep their
//!   slots);
//! * otherwise upper-case letters become lower-case and `-` becomes `_`
//!   (`My-Pipe` → `ferry_my_pipe`);
//! * any other character becomes `_` too, and since that loses
//!   information, a short hash of the original name is appended
//!   (`café.v2` → `ferry_caf__v2_<8 hex digits>`); so is one when the name is
//!   longer than [`MAX_NAME`] bytes, which is shortened to leave room.
//!
//! The hash is FNV-1a (32 bits) of the name's UTF-8 bytes, written as 8
//! hexadecimal digits: it never changes between versions of ferry.

/// Longest `<name>`: 63 bytes minus `ferry_` and the `_snap` suffix of
/// the temporary slot a restarted snapshot uses.
pub const MAX_NAME: usize = 63 - "ferry_".len() - "_snap".len();

/// `ferry_<name>`: ferry's replication slot and publication for
/// `pipeline`, and the prefix of its other objects on the source.
pub fn slot_name(pipeline: &str) -> String {
    format!("ferry_{}", slot_suffix(pipeline))
}

fn slot_suffix(pipeline: &str) -> String {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if !pipeline.is_empty() && pipeline.len() <= MAX_NAME && pipeline.chars().all(valid) {
        return pipeline.to_owned();
    }
    let mut lossy = false;
    let mapped: String = pipeline
        .chars()
        .map(|c| match c {
            c if valid(c) => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            '-' => '_',
            _ => {
                lossy = true;
                '_'
            }
        })
        .collect();
    if !lossy && !mapped.is_empty() && mapped.len() <= MAX_NAME {
        return mapped;
    }
    let hash = format!("{:08x}", fnv1a(pipeline.as_bytes()));
    let keep = MAX_NAME - hash.len() - 1;
    let head: String = mapped.chars().take(keep).collect();
    format!("{head}_{hash}")
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_slot(s: &str) -> bool {
        s.len() + "_snap".len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn valid_names_stay_and_others_map() {
        assert_eq!(slot_name("shop"), "ferry_shop");
        assert_eq!(slot_name("crash_2"), "ferry_crash_2");
        assert_eq!(slot_name("my-pipe"), "ferry_my_pipe");
        assert_eq!(slot_name("My-Pipe"), "ferry_my_pipe");
        let forty = "a".repeat(40);
        assert_eq!(slot_name(&forty), format!("ferry_{forty}"));
        // Lossy or too long: a hash that does not change.
        assert_eq!(
            slot_name("café.v2"),
            format!("ferry_caf__v2_{:08x}", fnv1a("café.v2".as_bytes()))
        );
        assert_eq!(fnv1a(b"a"), 0xe40c_292c, "FNV-1a test vector");
        let long = "Sales-Replica-".repeat(10);
        let slot = slot_name(&long);
        assert_eq!(slot.len(), 6 + MAX_NAME);
        assert!(slot.starts_with("ferry_sales_replica_sales_"));
        assert_ne!(slot, slot_name(&"Sales-Replica-".repeat(11)));
        for name in ["my-pipe", "x", "A.B c", "日本", &long, &forty, "-"] {
            assert!(
                valid_slot(&slot_name(name)),
                "{name:?} → {}",
                slot_name(name)
            );
            assert_eq!(slot_name(name), slot_name(name));
        }
    }
}
