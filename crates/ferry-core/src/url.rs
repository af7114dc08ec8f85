//! Credentials inside database URLs (`scheme://user:password@host/db`):
//! where they end, how to print a URL without them, and how to hand a URL
//! with raw special characters in its password to a strict URL parser.
//!
//! A password may hold any character, `@`, `:`, `/` and `?` included,
//! without percent-encoding: the user information ends at the first `@`
//! after which the URL reads as a host list, a database and a query
//! (`host[:port][,host[:port]...][/db][?key=value&...]`, no `@` in the
//! host list or the database), so the last `@` before the host; the user
//! name (up to the first `:`) holds no `/` or `?`. Text already percent-encoded
//! (`%40`) is left as it is. One spelling stays ambiguous: an `@` in the
//! query of a URL without user information but with a port
//! (`postgres://h:5432/db?x=a@b`); write such an `@` as `%40`.

/// The byte range of the user information (`user` or `user:password`) of
/// `url`, if it has one.
pub fn userinfo(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let reads_as_host = |after: &str| {
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (hosts, tail) = after.split_at(end);
        let (db, query) = tail.split_once('?').unwrap_or((tail, ""));
        let host_char = |c: char| c.is_ascii_alphanumeric() || ".-_[]:,%".contains(c);
        let parameter = |p: &str| {
            p.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
        };
        !hosts.is_empty()
            && hosts.chars().all(host_char)
            && !db.contains('@')
            && (query.is_empty() || query.split('&').all(parameter))
    };
    rest.match_indices('@')
        .map(|(i, _)| i)
        .find(|&i| reads_as_host(&rest[i + 1..]))
        .filter(|&i| {
            let user = rest[..i].split(':').next().unwrap_or("");
            !user.contains(['/', '?'])
        })
        .map(|i| start..start + i)
}

/// `url` with its password replaced by `***`, safe to print.
pub fn redact(url: &str) -> String {
    let Some(range) = userinfo(url) else {
        return url.to_owned();
    };
    match url[range.clone()].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..range.start], &url[range.end..]),
        None => url.to_owned(),
    }
}

/// `url` with the user and password percent-encoded where they hold
/// characters a URL parser would split on, so it reads them as
/// [`userinfo`] does. Existing `%XX` escapes are kept.
pub fn encode_userinfo(url: &str) -> String {
    let Some(range) = userinfo(url) else {
        return url.to_owned();
    };
    let info = &url[range.clone()];
    let encoded = match info.split_once(':') {
        Some((user, password)) => format!("{}:{}", encode(user), encode(password)),
        None => encode(info),
    };
    format!("{}{encoded}{}", &url[..range.start], &url[range.end..])
}

fn encode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, &b) in bytes.iter().enumerate() {
        let escape = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || escape {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords that break a naive split, each with what must not show.
    const NASTY: &[&str] = &[
        "p@ss",
        "@",
        "p@ss@word",
        "a:b@c",
        "sl/ash@",
        "q?x@y",
        "h@st:5432/db",
        "%40already",
        "sp ace#hash",
        "ünï@code",
    ];

    #[test]
    fn the_last_at_before_the_host_ends_the_password() {
        for pw in NASTY {
            for tail in [
                "db.example:5432/app",
                "h/db?application_name=a@b",
                "h1:5,h2:6/db",
            ] {
                let url = format!("postgres://app:{pw}@{tail}");
                let range = userinfo(&url).unwrap_or_else(|| panic!("{url}"));
                assert_eq!(&url[range], format!("app:{pw}"), "{url}");
                let shown = redact(&url);
                // Nothing of the password shows, however it is cut.
                assert_eq!(shown, format!("postgres://app:***@{tail}"), "{url}");
            }
        }
    }

    #[test]
    fn urls_without_a_password_are_shown_whole() {
        for url in [
            "postgres://app@h/db",
            "postgres://h/db",
            "sqlite:/tmp/a@b.db",
            "postgres://h/db?application_name=a@b",
        ] {
            assert_eq!(redact(url), url);
        }
        assert_eq!(
            userinfo("postgres://h/db?application_name=a@b"),
            None,
            "an @ in the query is not user information"
        );
    }

    #[test]
    fn encoded_user_information_parses_as_split_here() {
        assert_eq!(
            encode_userinfo("postgres://app:p@ss/w@r?d@h:5/db"),
            "postgres://app:p%40ss%2Fw%40r%3Fd@h:5/db"
        );
        assert_eq!(
            encode_userinfo("postgres://app:%40already@h/db"),
            "postgres://app:%40already@h/db"
        );
        assert_eq!(encode_userinfo("postgres://h/db"), "postgres://h/db");
    }
}
