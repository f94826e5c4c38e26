//! The members' logs: parsing their lines and what the drill looks for
//! in them.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// One line of a member's log.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub node: u64,
    pub msg: String,
}

/// Parses `2026-11-23T18:35:34.105Z INFO  [n3] message`.
pub fn parse_log_line(line: &str) -> Option<LogLine> {
    let (ts, rest) = line.split_once(' ')?;
    let rest = rest.trim_start();
    let (_level, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("[n")?;
    let (node, msg) = rest.split_once("] ")?;
    Some(LogLine {
        at_ms: parse_utc_ms(ts)?,
        node: node.parse().ok()?,
        msg: msg.to_string(),
    })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` to milliseconds since the Unix epoch.
pub fn parse_utc_ms(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, s, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    Some((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The lines of `path` from byte `from` on, at most 4 MiB of them.
pub fn read_log_from(path: &Path, from: u64) -> Vec<LogLine> {
    let Ok(mut f) = fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(4 << 20).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(parse_log_line)
        .collect()
}

/// The last lines of a log that look like a crash (a panic and its
/// message), for the report of a member that died.
pub fn crash_summary(path: &Path, from: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return "no log".into();
    };
    let _ = f.seek(SeekFrom::Start(from));
    let mut buf = Vec::new();
    let _ = f.take(4 << 20).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        return lines[i..lines.len().min(i + 2)].join(" / ");
    }
    lines
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or("log is empty".into(), |l| l.to_string())
}

pub fn is_detection(msg: &str, leader: u64) -> bool {
    msg.starts_with(&format!("link to leader {leader} lost"))
        || msg.starts_with("pre-vote for term")
        || msg.starts_with("election for term")
        || msg.starts_with("no leader known")
        || msg.starts_with("became precandidate")
        || msg.starts_with("became candidate")
}

/// A line about roles, leaders and elections (not links or start-up).
pub fn is_role_line(msg: &str) -> bool {
    [
        "became ",
        "leader is ",
        "no leader known",
        "pre-vote for",
        "election for",
        "link to leader",
    ]
    .iter()
    .any(|p| msg.starts_with(p))
}

/// `became leader in term N (...)` → N.
pub fn leader_term(msg: &str) -> Option<u64> {
    msg.strip_prefix("became leader in term ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_lines() {
        let l = parse_log_line(
            "2026-11-23T18:35:34.105Z INFO  [n3] link to leader 1 lost: connection closed by peer",
        )
        .unwrap();
        assert_eq!(l.node, 3);
        assert_eq!(l.msg, "link to leader 1 lost: connection closed by peer");
        // 2026-11-23T18:35:34.105Z, cross-checked with `date -d ... +%s%3N`.
        assert_eq!(l.at_ms, 1_795_458_934_105);
        assert!(is_detection(&l.msg, 1));
        assert!(!is_detection(&l.msg, 2));
        assert!(parse_log_line("thread 'main' panicked at x").is_none());
        assert_eq!(parse_utc_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_utc_ms("2000-03-01T00:00:00.001Z"),
            Some(951_868_800_001)
        );
    }

    #[test]
    fn finds_election_term() {
        assert_eq!(
            leader_term("became leader in term 7 (won election)"),
            Some(7)
        );
        assert_eq!(leader_term("became follower in term 7 (x)"), None);
    }
}
