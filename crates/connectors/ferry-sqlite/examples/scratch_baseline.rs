use rusqlite::{Connection, params_from_iter, types::Value as V};
use std::time::Instant;
fn main() {
    let n = 1_000_000usize;
    for per in [1usize, 16, 64] {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("b.db")).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-32768; CREATE TABLE b(id INTEGER NOT NULL, name TEXT NOT NULL, amount DECIMAL_TEXT(12,2) NOT NULL, at DATETIME NOT NULL, flag BOOLEAN NOT NULL, PRIMARY KEY(id))").unwrap();
        let rows: Vec<[V; 5]> = (0..n)
            .map(|i| {
                [
                    V::Integer(i as i64),
                    V::Text(format!("customer {i}")),
                    V::Text(format!("{}.{:02}", i % 10000, i % 100)),
                    V::Text(format!("2023-11-14 22:13:20.{:06}", i % 1000000)),
                    V::Integer((i % 2) as i64),
                ]
            })
            .collect();
        let one = "(?,?,?,?,?)";
        let sql = format!("INSERT INTO b VALUES {}", vec![one; per].join(","));
        let t = Instant::now();
        c.execute_batch("BEGIN").unwrap();
        {
            let mut st = c.prepare(&sql).unwrap();
            for chunk in rows.chunks(per) {
                if chunk.len() < per {
                    let s2 = format!("INSERT INTO b VALUES {}", vec![one; chunk.len()].join(","));
                    c.execute(&s2, params_from_iter(chunk.iter().flatten()))
                        .unwrap();
                    continue;
                }
                for (i, v) in chunk.iter().flatten().enumerate() {
                    st.raw_bind_parameter(i + 1, v).unwrap();
                }
                st.raw_execute().unwrap();
            }
        }
        c.execute_batch("COMMIT").unwrap();
        let e = t.elapsed();
        println!("{per} rows/stmt: {:.0} rows/s", n as f64 / e.as_secs_f64());
    }
}
