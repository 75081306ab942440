//! Process figures from Linux's /proc: resident set size from `/proc/<pid>/status` and CPU
//! time from `/proc/<pid>/stat`, plus raising this process's open-file limit.

use std::io;
use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcReading {
    pub at: Instant,
    pub rss_bytes: u64,
    /// user + system CPU time in clock ticks
    pub cpu_ticks: u64,
}

/// Read `/proc/<pid>` (`pid` = `None` reads this process).
pub fn read_proc(pid: Option<u32>) -> io::Result<ProcReading> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let rss_bytes = parse_vmrss(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in status"))?;
    let cpu_ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparseable stat"))?;
    Ok(ProcReading {
        at: Instant::now(),
        rss_bytes,
        cpu_ticks,
    })
}

/// `VmRSS:   123456 kB` → bytes.
fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime (fields 14 and 15 of /proc/<pid>/stat). The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11, stime → index 12
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU use between two readings of the same process, in percent of one core.
pub fn cpu_percent(prev: &ProcReading, now: &ProcReading, ticks_per_sec: f64) -> Option<f64> {
    let wall = now.at.checked_duration_since(prev.at)?.as_secs_f64();
    if wall <= 0.0 {
        return None;
    }
    let cpu = now.cpu_ticks.saturating_sub(prev.cpu_ticks) as f64 / ticks_per_sec;
    Some(100.0 * cpu / wall)
}

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit whose soft value does not exceed its hard value.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tdispatch-hub\nVmPeak:\t  999 kB\nVmRSS:\t  20480 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(status), Some(20480 * 1024));
        let stat = "4242 (dispatch (hub)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn reads_own_process() {
        let a = read_proc(None).unwrap();
        assert!(a.rss_bytes > 0);
        assert!(clock_ticks_per_sec() > 0.0);
        assert!(raise_nofile_limit().unwrap() > 0);
    }
}
