//! Small hand-written parsers for the /proc files the sampler reads.
//!
//! Every parser is a pure function from the file's text to raw counters, so it is unit-tested on
//! text captured from real hosts. This module does no I/O and computes no rates: deltas between two
//! samples are the collector's job. Units are the kernel's (clock ticks, kB, sectors) except where
//! a field's doc says otherwise.
//!
//! Hand-written rather than the `procfs` crate: with it a host sample costs 37–39 % more (its meminfo
//! parse builds a map of every line), it reads PSI and load averages as `f32`, refuses a cpu PSI file
//! without a `full` line (kernels before 5.13) and panics on some malformed `/proc/PID/stat` lines.
//! Figures and rule: BENCHMARKS.md, "Hand-written /proc parsers vs the procfs crate".

use std::fmt;

/// Why a file's text could not be parsed; the caller adds which file it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// `what` is only formatted on the error path: the per-field labels of a sample cost nothing otherwise.
fn num<T: std::str::FromStr>(
    s: Option<&str>,
    what: impl std::fmt::Display,
) -> Result<T, ParseError> {
    let s = s.ok_or_else(|| err(format!("missing {what}")))?;
    s.parse().map_err(|_| err(format!("bad {what}: {s:?}")))
}

pub use aura_model::host::CpuModes;

/// One `cpu` line of /proc/stat, in clock ticks (USER_HZ).
pub type CpuTimes = CpuModes<u64>;

/// What the sampler needs from /proc/stat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// The aggregate `cpu` line: all CPUs together.
    pub total: CpuTimes,
    /// Per online CPU, in file order (`cpu0`, `cpu1`, ...).
    pub cores: Vec<CpuTimes>,
    /// Boot time, Unix seconds.
    pub btime: Option<u64>,
}

fn parse_cpu_fields<'a>(mut it: impl Iterator<Item = &'a str>) -> Result<CpuTimes, ParseError> {
    let mut next = |what| num::<u64>(it.next(), what);
    let user = next("user")?;
    let nice = next("nice")?;
    let system = next("system")?;
    let idle = next("idle")?;
    // Kernels before 2.6.x lacked the later columns; missing ones read as zero.
    let mut opt = || next("").unwrap_or(0);
    Ok(CpuTimes {
        user,
        nice,
        system,
        idle,
        iowait: opt(),
        irq: opt(),
        softirq: opt(),
        steal: opt(),
    })
}

/// Parses /proc/stat: the aggregate `cpu` line, each `cpuN` line and `btime`.
pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let mut stat = Stat::default();
    let mut saw_total = false;
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(key) = it.next() else { continue };
        if key == "cpu" {
            stat.total = parse_cpu_fields(it)?;
            saw_total = true;
        } else if let Some(idx) = key.strip_prefix("cpu") {
            if idx.bytes().all(|b| b.is_ascii_digit()) {
                stat.cores.push(parse_cpu_fields(it)?);
            }
        } else if key == "btime" {
            stat.btime = Some(num(it.next(), "btime")?);
        }
    }
    if !saw_total {
        return Err(err("no aggregate cpu line"));
    }
    Ok(stat)
}

/// What the sampler needs from /proc/meminfo, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`: usable RAM.
    pub total: u64,
    /// `MemFree`: unused RAM, which excludes reclaimable caches.
    pub free: u64,
    /// `MemAvailable`: the kernel's estimate of what can be allocated without swapping.
    pub available: u64,
    /// `Cached`: the page cache.
    pub cached: u64,
    /// `SwapTotal`.
    pub swap_total: u64,
    /// `SwapFree`.
    pub swap_free: u64,
}

/// Parses /proc/meminfo. `MemAvailable` (Linux ≥ 3.14) is required: estimating it ourselves
/// would be a different, worse number.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let mut m = MemInfo::default();
    let (mut total, mut available) = (false, false);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => {
                total = true;
                &mut m.total
            }
            "MemFree" => &mut m.free,
            "MemAvailable" => {
                available = true;
                &mut m.available
            }
            "Cached" => &mut m.cached,
            "SwapTotal" => &mut m.swap_total,
            "SwapFree" => &mut m.swap_free,
            _ => continue,
        };
        let mut it = rest.split_ascii_whitespace();
        let value: u64 = num(it.next(), key)?;
        // Values are in kB (really KiB) when a unit is given.
        *slot = match it.next() {
            Some("kB") => value * 1024,
            _ => value,
        };
    }
    if !total || !available {
        return Err(err("MemTotal or MemAvailable missing"));
    }
    Ok(m)
}

/// One line of a PSI file. Averages are percentages as the kernel writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiLine {
    /// Share of the last 10 s stalled, in percent.
    pub avg10: f64,
    /// Share of the last 60 s stalled, in percent.
    pub avg60: f64,
    /// Share of the last 300 s stalled, in percent.
    pub avg300: f64,
    /// Total stall time since boot, microseconds.
    pub total_usec: u64,
}

/// A /proc/pressure/{cpu,memory,io} file. `full` is absent for cpu on older kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Psi {
    /// Time at least one task was stalled on the resource.
    pub some: PsiLine,
    /// Time every non-idle task was stalled at once.
    pub full: Option<PsiLine>,
}

fn parse_psi_line<'a>(fields: impl Iterator<Item = &'a str>) -> Result<PsiLine, ParseError> {
    let mut l = PsiLine::default();
    for field in fields {
        let Some((k, v)) = field.split_once('=') else {
            continue;
        };
        match k {
            "avg10" => l.avg10 = num(Some(v), k)?,
            "avg60" => l.avg60 = num(Some(v), k)?,
            "avg300" => l.avg300 = num(Some(v), k)?,
            "total" => l.total_usec = num(Some(v), k)?,
            _ => {}
        }
    }
    Ok(l)
}

/// Parses one /proc/pressure/* file.
pub fn parse_pressure(text: &str) -> Result<Psi, ParseError> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        match it.next() {
            Some("some") => some = Some(parse_psi_line(it)?),
            Some("full") => full = Some(parse_psi_line(it)?),
            _ => {}
        }
    }
    Ok(Psi {
        some: some.ok_or_else(|| err("no `some` line"))?,
        full,
    })
}

/// /proc/loadavg: the 1, 5 and 15 minute load averages.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], ParseError> {
    let mut it = text.split_ascii_whitespace();
    Ok([
        num(it.next(), "load1")?,
        num(it.next(), "load5")?,
        num(it.next(), "load15")?,
    ])
}

/// One block device line of /proc/diskstats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRaw {
    /// The kernel's device name (`sda`, `nvme0n1p1`).
    pub name: String,
    /// Reads completed.
    pub reads: u64,
    /// 512-byte sectors, whatever the device's real sector size (the kernel's convention).
    pub read_sectors: u64,
    /// Writes completed.
    pub writes: u64,
    /// 512-byte sectors written.
    pub write_sectors: u64,
    /// Milliseconds during which the device had I/O in flight.
    pub io_ms: u64,
}

/// Parses /proc/diskstats, every line (filter with [`is_physical_disk`]).
pub fn parse_diskstats(text: &str) -> Result<Vec<DiskRaw>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        if it.next().is_none() {
            continue;
        }
        let _minor = it.next();
        let name = it.next().ok_or_else(|| err("missing device name"))?;
        let mut f = [0u64; 10];
        for (i, slot) in f.iter_mut().enumerate() {
            *slot = num(it.next(), format_args!("{name} field {}", i + 4))?;
        }
        out.push(DiskRaw {
            name: name.to_owned(),
            reads: f[0],
            read_sectors: f[2],
            writes: f[4],
            write_sectors: f[6],
            io_ms: f[9],
        });
    }
    Ok(out)
}

/// Whether `name` is a device worth reporting: not a loop, ram or zram device (memory, not disk),
/// and not a partition of a whole disk that is also listed (which would count its I/O twice).
/// A partition is recognised by name: the disk's name plus digits (`sda1`) or `p` and digits
/// (`nvme0n1p1`, `mmcblk0p2`).
pub fn is_physical_disk(name: &str, all: &[DiskRaw]) -> bool {
    if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram") {
        return false;
    }
    !all.iter().any(|d| {
        d.name != name
            && name.strip_prefix(d.name.as_str()).is_some_and(|rest| {
                let digits = rest.strip_prefix('p').unwrap_or(rest);
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            })
    })
}

/// One interface line of /proc/net/dev.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetRaw {
    /// The interface name, without the colon.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_drops: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped on transmit.
    pub tx_drops: u64,
}

/// Parses /proc/net/dev (after its two header lines).
pub fn parse_net_dev(text: &str) -> Result<Vec<NetRaw>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let mut f = [0u64; 16];
        let mut it = rest.split_ascii_whitespace();
        for (i, slot) in f.iter_mut().enumerate() {
            *slot = num(it.next(), format_args!("{name} column {i}"))?;
        }
        out.push(NetRaw {
            name: name.to_owned(),
            rx_bytes: f[0],
            rx_packets: f[1],
            rx_errors: f[2],
            rx_drops: f[3],
            tx_bytes: f[8],
            tx_packets: f[9],
            tx_errors: f[10],
            tx_drops: f[11],
        });
    }
    Ok(out)
}

/// What the process snapshot needs from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PidStat {
    /// The state letter (`R`, `S`, `Z`, …).
    pub state: u8,
    /// The parent's pid.
    pub ppid: u32,
    /// The process group.
    pub pgrp: i32,
    /// User CPU, clock ticks.
    pub utime: u64,
    /// System CPU, clock ticks.
    pub stime: u64,
    /// The nice value (−20 to 19), per thread on Linux: this is the main thread's.
    pub nice: i32,
    /// Threads in the process.
    pub num_threads: u64,
    /// Clock ticks after boot.
    pub starttime: u64,
    /// Virtual memory size, bytes.
    pub vsize_bytes: u64,
    /// Resident set size, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name may contain spaces and parentheses, so fields are
/// counted from the *last* `)`.
pub fn parse_pid_stat(text: &str) -> Result<PidStat, ParseError> {
    let close = text.rfind(')').ok_or_else(|| err("no `)` after comm"))?;
    // Field numbers below are those of proc(5); field 3 (state) is the first after `)`.
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Ok(PidStat {
        state: field(3)
            .and_then(|s| s.bytes().next())
            .ok_or_else(|| err("missing state"))?,
        ppid: num(field(4), "ppid")?,
        pgrp: num(field(5), "pgrp")?,
        utime: num(field(14), "utime")?,
        stime: num(field(15), "stime")?,
        nice: num(field(19), "nice")?,
        num_threads: num(field(20), "num_threads")?,
        starttime: num(field(22), "starttime")?,
        vsize_bytes: num(field(23), "vsize")?,
        rss_pages: num(field(24), "rss")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a 2-CPU VM (kernel 6.x); the `intr` line is shortened.
    const STAT: &str = "cpu  358365 0 77858 776249 6486 0 1275 2004 0 0
cpu0 176799 0 37362 393995 1567 0 282 986 0 0
cpu1 181565 0 40496 382254 4918 0 992 1018 0 0
intr 4918650 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 13855764
btime 1795360887
processes 402267
procs_running 1
procs_blocked 0
softirq 2208931 0 302016 2 21614 0 0 3 1038227 0 847069
";

    #[test]
    fn stat() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.cores.len(), 2);
        assert_eq!(
            s.total,
            CpuTimes {
                user: 358365,
                nice: 0,
                system: 77858,
                idle: 776249,
                iowait: 6486,
                irq: 0,
                softirq: 1275,
                steal: 2004,
            }
        );
        assert_eq!(s.cores[1].iowait, 4918);
        assert_eq!(s.btime, Some(1795360887));
        assert_eq!(s.total.busy(), 358365 + 77858 + 1275 + 2004);
        // The softirq *line* must not be mistaken for a CPU.
        assert!(parse_stat("intr 1\n").is_err());
    }

    const MEMINFO: &str = "MemTotal:       24684096 kB
MemFree:        20204488 kB
MemAvailable:   24228688 kB
Buffers:           51392 kB
Cached:          4019396 kB
SwapCached:            0 kB
Active:          1815720 kB
Inactive:        2250840 kB
Unevictable:       11460 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:               172 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn meminfo() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 24684096 * 1024);
        assert_eq!(m.free, 20204488 * 1024);
        assert_eq!(m.available, 24228688 * 1024);
        assert_eq!(m.cached, 4019396 * 1024);
        assert_eq!((m.swap_total, m.swap_free), (0, 0));
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn pressure() {
        // cpu on a 6.x kernel (has a `full` line), and an old-kernel cpu file without one.
        let cpu = parse_pressure(
            "some avg10=2.05 avg60=9.45 avg300=12.78 total=452914302\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        assert_eq!(cpu.some.avg10, 2.05);
        assert_eq!(cpu.some.avg300, 12.78);
        assert_eq!(cpu.some.total_usec, 452914302);
        assert_eq!(cpu.full.unwrap().total_usec, 0);
        let mem = parse_pressure(
            "some avg10=0.06 avg60=0.60 avg300=0.85 total=54729365\n\
             full avg10=0.01 avg60=0.36 avg300=0.56 total=43117288\n",
        )
        .unwrap();
        assert_eq!(mem.full.unwrap().avg60, 0.36);
        let old = parse_pressure("some avg10=1.00 avg60=0.50 avg300=0.10 total=7\n").unwrap();
        assert!(old.full.is_none());
        assert!(parse_pressure("").is_err());
        assert!(parse_pressure("some avg10=x total=1\n").is_err());
    }

    #[test]
    fn loadavg() {
        assert_eq!(
            parse_loadavg("1.15 1.64 1.55 1/89 12805\n").unwrap(),
            [1.15, 1.64, 1.55]
        );
        assert!(parse_loadavg("1.0\n").is_err());
    }

    const DISKSTATS: &str = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   7       1 loop1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 833693 20505 38604514 1846572 148991 166353 81645064 374429 0 106508 2239911 221991 84 38078024 18172 13790 736
 254       1 vda1 833000 20505 38600000 1846000 148000 166353 81600000 374000 0 106000 2239000 221991 84 38078024 18172 13790 736
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 10 0 80 1 20 0 160 2 0 3 3
 259       1 nvme0n1p1 10 0 80 1 20 0 160 2 0 3 3
   8      16 sdb1 5 0 40 1 6 0 48 1 0 2 2
";

    #[test]
    fn diskstats() {
        let all = parse_diskstats(DISKSTATS).unwrap();
        assert_eq!(all.len(), 8);
        let vda = &all[2];
        assert_eq!(
            *vda,
            DiskRaw {
                name: "vda".into(),
                reads: 833693,
                read_sectors: 38604514,
                writes: 148991,
                write_sectors: 81645064,
                io_ms: 106508,
            }
        );
        // Old kernels print only 11 counters (nvme lines above); that must still parse.
        assert_eq!(all[5].io_ms, 3);
        let kept: Vec<&str> = all
            .iter()
            .filter(|d| is_physical_disk(&d.name, &all))
            .map(|d| d.name.as_str())
            .collect();
        // sdb1 is kept: its whole disk is not listed, so it is the only view of that I/O.
        assert_eq!(kept, ["vda", "nvme0n1", "sdb1"]);
        assert!(parse_diskstats(" 1 2 sda 1 2\n").is_err());
    }

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 366706450  412003    0    0    0     0          0         0 366706450  412003    0    0    0     0       0          0
  ifb0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 224817481    8447    3    4    0     0          0         0   452554    4941    5    6    0     0       0          0
";

    #[test]
    fn net_dev() {
        let n = parse_net_dev(NET_DEV).unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n[0].name, "lo");
        assert_eq!(
            n[2],
            NetRaw {
                name: "eth0".into(),
                rx_bytes: 224817481,
                rx_packets: 8447,
                rx_errors: 3,
                rx_drops: 4,
                tx_bytes: 452554,
                tx_packets: 4941,
                tx_errors: 5,
                tx_drops: 6,
            }
        );
        assert!(parse_net_dev("h\nh\n eth0: 1 2 3\n").is_err());
    }

    #[test]
    fn pid_stat() {
        // A comm with spaces and a `)` inside, as a hostile process could name itself.
        let text = "12345 (my ) prog) S 1 12345 12345 0 -1 4194560 2000 0 0 0 150 30 0 0 15 -5 7 0 \
                    98765 123456789 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_pid_stat(text).unwrap();
        assert_eq!(
            s,
            PidStat {
                state: b'S',
                ppid: 1,
                pgrp: 12345,
                utime: 150,
                stime: 30,
                nice: -5,
                num_threads: 7,
                starttime: 98765,
                vsize_bytes: 123456789,
                rss_pages: 2500,
            }
        );
        assert!(parse_pid_stat("12 (x) S 1").is_err());
    }
}
