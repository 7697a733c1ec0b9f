//! The host memory a run may take, so that a table that cannot fit is
//! refused before any allocation (SPEC §14), with the sizes, rather than
//! killed by the OOM killer: Linux overcommits, so each allocation
//! succeeds on its own and the process dies only when the pages are
//! touched. Used by the CPU backend and by a GPU on a software adapter
//! (lavapipe's buffers are host memory).

use crate::{config::Shape, Error, Result};

/// What this host can give now, in bytes, and where that figure comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    pub bytes: u64,
    pub from: String,
}

/// `LATENT_LINE_HOST_MEMORY` (bytes) where set: what a run may take,
/// instead of what the system says (a lower figure keeps room for other
/// work; a higher one runs what the check would refuse, e.g. into swap
/// the system does not count).
const OVERRIDE: &str = "LATENT_LINE_HOST_MEMORY";

/// The memory this host can give a run now: the least of Linux's
/// `MemAvailable` (with free swap) and the headroom under each memory
/// limit of the process's cgroups (v2 or v1); `None` where none can be
/// read (not Linux), where nothing is checked.
pub fn available() -> Result<Option<Available>> {
    if let Some(v) = std::env::var_os(OVERRIDE) {
        let bytes = v
            .to_str()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::invalid(OVERRIDE, format!("{v:?} is not a number of bytes")))?;
        return Ok(Some(Available { bytes, from: OVERRIDE.into() }));
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut best = read("/proc/meminfo")
        .and_then(|m| meminfo(&m))
        .map(|bytes| Available { bytes, from: "MemAvailable and SwapFree in /proc/meminfo".into() });
    if let Some(cg) = read("/proc/self/cgroup") {
        for (limit, from) in cgroup_headroom(&cg, &|p: &str| read(p)) {
            if best.as_ref().is_none_or(|b| limit < b.bytes) {
                best = Some(Available { bytes: limit, from });
            }
        }
    }
    Ok(best)
}

/// `MemAvailable + SwapFree` of a `/proc/meminfo` text, in bytes.
fn meminfo(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))?;
        let kb: u64 = line[name.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
        kb.checked_mul(1024)
    };
    Some(field("MemAvailable")?.saturating_add(field("SwapFree").unwrap_or(0)))
}

/// The headroom under each memory limit of the cgroups that `/proc/self/cgroup`
/// (`text`) names, with the file it comes from: limit − (usage − the file
/// cache, which the kernel reclaims before it kills). cgroup v2
/// (`memory.max`, `memory.current`, `active_file` and `inactive_file` of
/// `memory.stat`) or v1's `memory` controller (`memory.limit_in_bytes`,
/// `memory.usage_in_bytes`, `total_active_file`, `total_inactive_file`),
/// for the group and each of its parents up to the mount (a parent's limit
/// holds its children too; a group that is not under the mount, as a
/// cgroup namespace shows the container's own group, or that has no
/// memory files, is passed over). `read` gives a file's text.
fn cgroup_headroom(text: &str, read: &dyn Fn(&str) -> Option<String>) -> Vec<(u64, String)> {
    let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
    // The file cache of a memory.stat text (the keys given).
    let cache = |stat: Option<String>, keys: [&str; 2]| -> u64 {
        let stat = stat.unwrap_or_default();
        keys.iter()
            .filter_map(|key| {
                stat.lines().find_map(|l| {
                    l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse::<u64>().ok())
                })
            })
            .fold(0u64, u64::saturating_add)
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (root, max, cur, keys) = if ctrl.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current", ["active_file", "inactive_file"])
        } else if ctrl.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                ["total_active_file", "total_inactive_file"],
            )
        } else {
            continue;
        };
        let mut dir = format!("{root}{}", path.trim_end_matches('/'));
        // The group, then each parent up to the mount's root.
        loop {
            let f = |n: &str| format!("{dir}/{n}");
            if let (Some(limit), Some(used)) = (num(read(&f(max))), num(read(&f(cur)))) {
                let used = used.saturating_sub(cache(read(&f("memory.stat")), keys));
                // (v1 writes "no limit" as a huge page-aligned number; v2 as "max".)
                if limit < 1 << 60 {
                    out.push((limit.saturating_sub(used), f(max)));
                }
            }
            match dir.rfind('/') {
                Some(i) if i >= root.len() => dir.truncate(i),
                _ => break,
            }
        }
    }
    out
}

/// What a run takes of host memory beside the table-sized buffers that
/// [`check`] is given (measured: code, threads, small buffers) on the CPU
/// backend…
pub const RESERVE_CPU: u64 = 64 << 20;
/// … and on a software adapter (lavapipe's own, the transfer blocks of an
/// upload or a save's readback: `gpu::pipes`).
pub const RESERVE_SOFTWARE_GPU: u64 = 256 << 20;

/// Refuses `shape` when the host memory a run needs for it, its `parts`
/// (bytes, and what they hold: a part of no bytes is not named) and
/// `reserve` for the rest of the run, is more than this host can give now.
pub fn check(shape: Shape, parts: &[(u64, String)], reserve: u64) -> Result<()> {
    let need = parts.iter().fold(reserve, |n, (b, _)| n.saturating_add(*b));
    let what = parts.iter().filter(|(b, _)| *b > 0).map(|(_, w)| w.as_str()).collect::<Vec<_>>().join("; ");
    match available()? {
        Some(a) if need > a.bytes => Err(shape.too_large(format!(
            "it needs {} of host memory ({what}; and {} for the rest of the run), and this host can give {} now ({}{})",
            size(need),
            size(reserve),
            size(a.bytes),
            a.from,
            if a.from == OVERRIDE { String::new() } else { format!("; {OVERRIDE}=BYTES overrides the figure") }
        ))),
        _ => Ok(()),
    }
}

/// `bytes` for a message: GB, MB or bytes.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.2} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_counts_available_and_free_swap() {
        let m = "MemTotal:       32000000 kB\nMemFree:  100 kB\nMemAvailable:   23891672 kB\nSwapTotal: 8 kB\nSwapFree:        2048 kB\n";
        assert_eq!(meminfo(m), Some((23_891_672 + 2048) * 1024));
        assert_eq!(meminfo("MemAvailable: 10 kB\n"), Some(10 * 1024));
        assert_eq!(meminfo("MemFree: 10 kB\n"), None);
    }

    /// The group and its parents, v2 and v1 alike, each limit counting; a
    /// group the mount does not show passed over; a limit of "max" or v1's
    /// huge number is no limit; file cache, active and inactive, is not
    /// use.
    #[test]
    fn cgroup_headroom_reads_every_limit() {
        let files = std::collections::HashMap::from([
            ("/sys/fs/cgroup/a/b/memory.max", "max\n"),
            ("/sys/fs/cgroup/a/b/memory.current", "1000\n"),
            ("/sys/fs/cgroup/a/memory.max", "5000\n"),
            ("/sys/fs/cgroup/a/memory.current", "3000\n"),
            ("/sys/fs/cgroup/a/memory.stat", "anon 1\ninactive_file 500\nactive_file 9\n"),
            ("/sys/fs/cgroup/memory/x/child/memory.limit_in_bytes", "9223372036854771712\n"),
            ("/sys/fs/cgroup/memory/x/child/memory.usage_in_bytes", "50\n"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "10\n"),
            ("/sys/fs/cgroup/memory/x/memory.limit_in_bytes", "4096\n"),
            ("/sys/fs/cgroup/memory/x/memory.usage_in_bytes", "1096\n"),
        ]);
        let read = |p: &str| files.get(p).map(|s| s.to_string());
        // (a: 5000 − (3000 − 500 inactive − 9 active file cache).)
        assert_eq!(cgroup_headroom("0::/a/b\n", &read), [(2509, "/sys/fs/cgroup/a/memory.max".to_string())]);
        assert_eq!(
            cgroup_headroom("4:memory:/x\n3:cpu:/\n", &read),
            [(3000, "/sys/fs/cgroup/memory/x/memory.limit_in_bytes".to_string())]
        );
        // An unlimited child of a limited group: the parent's limit.
        assert_eq!(
            cgroup_headroom("4:memory:/x/child\n", &read),
            [(3000, "/sys/fs/cgroup/memory/x/memory.limit_in_bytes".to_string())]
        );
        // A path the mount does not show: its root, here without a limit.
        assert!(cgroup_headroom("4:memory:/hidden/abc\n", &read).is_empty());
    }
}
