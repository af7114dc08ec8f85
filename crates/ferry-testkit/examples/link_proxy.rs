//! Runs the test kit's link proxy until killed, for trying a command over
//! a slow, distant link by hand:
//!
//! ```text
//! cargo run -p ferry-testkit --example link_proxy -- UPSTREAM_PORT [MBIT_PER_SEC] [LATENCY_MS]
//! ```
//!
//! It prints the port to connect to instead of `UPSTREAM_PORT` (on
//! 127.0.0.1), then the bytes carried each way every 5 seconds.

use std::time::Duration;

use ferry_testkit::{Link, LinkProxy};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u64| -> u64 {
        args.get(i).map_or(default, |s| {
            s.parse()
                .unwrap_or_else(|_| panic!("argument {s:?} is not a number"))
        })
    };
    let Some(upstream) = args.first().and_then(|s| s.parse::<u16>().ok()) else {
        eprintln!("usage: link_proxy UPSTREAM_PORT [MBIT_PER_SEC (100)] [LATENCY_MS (20)]");
        std::process::exit(2);
    };
    let link = Link {
        bits_per_sec: Some(num(1, 100) * 1_000_000),
        latency: Duration::from_millis(num(2, 20)),
    };
    let proxy = LinkProxy::start(upstream, link).expect("starting the proxy");
    println!("{}", proxy.port());
    loop {
        std::thread::sleep(Duration::from_secs(5));
        let (up, down) = proxy.bytes();
        eprintln!("carried {up} bytes up, {down} down");
    }
}
