//! A process's memory as the kernel counts it: `/proc/PID/status`.

use std::collections::HashMap;

/// The `kB` fields of `/proc/<pid>/status` (VmRSS, RssAnon, RssFile,
/// RssShmem, VmHWM, ...), in kB.
pub fn proc_status_kb(pid: i32) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim().strip_suffix(" kB")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}
