//! Side by side, in one process and one run: the hand-written parsers of `aura_host::procfs` against
//! the `procfs` crate, per /proc file and in total, with the real files (read + parse) and on captured
//! text (parse only). Decides whether the sampler moves to the crate: BENCHMARKS.md, "Hand-written
//! /proc parsers vs the procfs crate".
//!
//! `cargo bench -p aura-host --bench procfs_crate [-- ROUNDS]`. Not criterion: criterion measures one
//! function after another, and on a shared 2-core machine the load moves between them. Here every
//! round times each implementation once (a batch of calls each), the order flipping every round, and
//! the report gives medians over rounds plus the median of the per-round ratios.
//!
//! The crate's side converts into the types the collector uses, as a migrated collector would have to.

use std::fs::File;
use std::hint::black_box;
use std::io::Read;
use std::time::Instant;

use aura_host::procfs::{self as ours, CpuTimes, DiskRaw, MemInfo, NetRaw, PidStat, Psi, PsiLine};
use aura_host::{process_snapshot, Collector};
use procfs::net::InterfaceDeviceStatus;
use procfs::process::{Process, Stat};
use procfs::{
    CpuPressure, Current, CurrentSI, DiskStats, FromBufRead, FromBufReadSI, FromRead, IoPressure,
    KernelStats, LoadAverage, Meminfo, MemoryPressure, PressureRecord,
};

const PSI: [&str; 3] = [
    "/proc/pressure/cpu",
    "/proc/pressure/memory",
    "/proc/pressure/io",
];

/// The collector's way to read: one reused buffer.
fn read_into(path: &str, buf: &mut String) {
    buf.clear();
    File::open(path)
        .and_then(|mut f| f.read_to_string(buf))
        .expect(path);
}

// ---- conversions from the crate's types into the collector's (part of the crate's cost) ----

fn cpu(t: &procfs::CpuTime) -> CpuTimes {
    CpuTimes {
        user: t.user,
        nice: t.nice,
        system: t.system,
        idle: t.idle,
        iowait: t.iowait.unwrap_or(0),
        irq: t.irq.unwrap_or(0),
        softirq: t.softirq.unwrap_or(0),
        steal: t.steal.unwrap_or(0),
    }
}

fn stat_of(k: &KernelStats) -> ours::Stat {
    ours::Stat {
        total: cpu(&k.total),
        cores: k.cpu_time.iter().map(cpu).collect(),
        btime: Some(k.btime),
    }
}

fn mem_of(m: &Meminfo) -> MemInfo {
    MemInfo {
        total: m.mem_total,
        free: m.mem_free,
        available: m.mem_available.unwrap_or(0),
        cached: m.cached,
        swap_total: m.swap_total,
        swap_free: m.swap_free,
    }
}

fn psi_line(r: &PressureRecord) -> PsiLine {
    PsiLine {
        avg10: f64::from(r.avg10),
        avg60: f64::from(r.avg60),
        avg300: f64::from(r.avg300),
        total_usec: r.total,
    }
}

fn psi_of(some: &PressureRecord, full: &PressureRecord) -> Psi {
    Psi {
        some: psi_line(some),
        full: Some(psi_line(full)),
    }
}

fn load_of(l: &LoadAverage) -> [f64; 3] {
    [f64::from(l.one), f64::from(l.five), f64::from(l.fifteen)]
}

fn disks_of(d: DiskStats) -> Vec<DiskRaw> {
    d.0.into_iter()
        .map(|d| DiskRaw {
            name: d.name,
            reads: d.reads,
            read_sectors: d.sectors_read,
            writes: d.writes,
            write_sectors: d.sectors_written,
            io_ms: d.time_in_progress,
        })
        .collect()
}

fn nets_of(n: InterfaceDeviceStatus) -> Vec<NetRaw> {
    n.0.into_values()
        .map(|d| NetRaw {
            name: d.name,
            rx_bytes: d.recv_bytes,
            rx_packets: d.recv_packets,
            rx_errors: d.recv_errs,
            rx_drops: d.recv_drop,
            tx_bytes: d.sent_bytes,
            tx_packets: d.sent_packets,
            tx_errors: d.sent_errs,
            tx_drops: d.sent_drop,
        })
        .collect()
}

fn pid_of(s: &Stat) -> PidStat {
    PidStat {
        state: s.state as u8,
        ppid: s.ppid as u32,
        pgrp: s.pgrp,
        utime: s.utime,
        stime: s.stime,
        nice: s.nice as i32,
        num_threads: s.num_threads as u64,
        starttime: s.starttime,
        vsize_bytes: s.vsize,
        rss_pages: s.rss,
    }
}

// ---- one part, both ways ----

/// One comparison: our way and the crate's way of the same work, each run `batch` times per sample.
struct Part {
    name: &'static str,
    batch: u32,
    ours: Box<dyn FnMut()>,
    theirs: Box<dyn FnMut()>,
    /// Per round: ns per call.
    t_ours: Vec<f64>,
    t_theirs: Vec<f64>,
}

fn part(
    name: &'static str,
    batch: u32,
    ours: impl FnMut() + 'static,
    theirs: impl FnMut() + 'static,
) -> Part {
    Part {
        name,
        batch,
        ours: Box::new(ours),
        theirs: Box::new(theirs),
        t_ours: Vec::new(),
        t_theirs: Vec::new(),
    }
}

fn time(f: &mut dyn FnMut(), batch: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..batch {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(batch)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_us(ns: f64) -> String {
    format!("{:.2} µs", ns / 1000.0)
}

/// Every /proc file of a host sample, our way: one reused buffer, our parsers.
fn all_ours(buf: &mut String) -> usize {
    read_into("/proc/stat", buf);
    let s = ours::parse_stat(buf).expect("stat");
    read_into("/proc/meminfo", buf);
    let m = ours::parse_meminfo(buf).expect("meminfo");
    read_into("/proc/loadavg", buf);
    let l = ours::parse_loadavg(buf).expect("loadavg");
    read_into("/proc/diskstats", buf);
    let d = ours::parse_diskstats(buf).expect("diskstats");
    read_into("/proc/net/dev", buf);
    let n = ours::parse_net_dev(buf).expect("net/dev");
    let mut p = 0;
    for path in PSI {
        read_into(path, buf);
        p += ours::parse_pressure(buf).expect("psi").some.total_usec as usize;
    }
    black_box((&s, &m, &l, &d, &n));
    s.cores.len() + d.len() + n.len() + p
}

/// The same with the crate's own file reading (`Current::current`).
fn all_theirs() -> usize {
    let s = stat_of(&KernelStats::current().expect("stat"));
    let m = mem_of(&Meminfo::current().expect("meminfo"));
    let l = load_of(&LoadAverage::current().expect("loadavg"));
    let d = disks_of(DiskStats::current().expect("diskstats"));
    let n = nets_of(InterfaceDeviceStatus::current().expect("net/dev"));
    let c = CpuPressure::current().expect("psi");
    let mm = MemoryPressure::current().expect("psi");
    let io = IoPressure::current().expect("psi");
    let p = [
        psi_of(&c.some, &c.full),
        psi_of(&mm.some, &mm.full),
        psi_of(&io.some, &io.full),
    ];
    black_box((&s, &m, &l, &d, &n, &p));
    s.cores.len() + d.len() + n.len()
}

/// The crate's parsers fed from our reused buffer: the cheapest way a migrated collector could read.
fn all_theirs_buf(buf: &mut String) -> usize {
    let si = procfs::current_system_info();
    read_into("/proc/stat", buf);
    let s = stat_of(&KernelStats::from_buf_read(buf.as_bytes(), si).expect("stat"));
    read_into("/proc/meminfo", buf);
    let m = mem_of(&Meminfo::from_buf_read(buf.as_bytes()).expect("meminfo"));
    read_into("/proc/loadavg", buf);
    let l = load_of(&LoadAverage::from_read(buf.as_bytes()).expect("loadavg"));
    read_into("/proc/diskstats", buf);
    let d = disks_of(DiskStats::from_buf_read(buf.as_bytes()).expect("diskstats"));
    read_into("/proc/net/dev", buf);
    let n = nets_of(InterfaceDeviceStatus::from_buf_read(buf.as_bytes()).expect("net/dev"));
    read_into(PSI[0], buf);
    let c = CpuPressure::from_buf_read(buf.as_bytes()).expect("psi");
    read_into(PSI[1], buf);
    let mm = MemoryPressure::from_buf_read(buf.as_bytes()).expect("psi");
    read_into(PSI[2], buf);
    let io = IoPressure::from_buf_read(buf.as_bytes()).expect("psi");
    let p = [
        psi_of(&c.some, &c.full),
        psi_of(&mm.some, &mm.full),
        psi_of(&io.some, &io.full),
    ];
    black_box((&s, &m, &l, &d, &n, &p));
    s.cores.len() + d.len() + n.len()
}

/// `process_snapshot`'s /proc work with the crate's API: stat, open fds, each task's children,
/// boot time (cached by both). The rlimit and allocator reads are the same calls as ours.
/// With `listed_fds`, open descriptors are counted by listing /proc/self/fd as ours does, instead
/// of the crate's `fd_count` (the directory's st_size on Linux ≥ 6.2): that separates the parsers'
/// cost from a cheaper counting method we could adopt without the crate.
fn process_theirs(listed_fds: bool) -> usize {
    let me = Process::myself().expect("myself");
    let stat = pid_of(&me.stat().expect("stat"));
    let fds = if listed_fds {
        std::fs::read_dir("/proc/self/fd").expect("fd dir").count()
    } else {
        me.fd_count().expect("fds")
    };
    let mut children = 0;
    for task in me.tasks().expect("tasks").flatten() {
        children += task.children().map_or(0, |c| c.len());
    }
    let btime = procfs::boot_time_secs().expect("btime");
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    // SAFETY: mallinfo2 only reads the allocator's counters (glibc >= 2.33), as process_snapshot does.
    let alloc = unsafe { libc::mallinfo2() };
    black_box((&stat, btime, limit, alloc.uordblks));
    fds + children
}

fn main() {
    // `cargo bench` passes `--bench`; a number among the arguments is the round count.
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400);

    let text = |p: &str| std::fs::read_to_string(p).expect(p);
    let (stat, meminfo, loadavg, diskstats, netdev, pidstat) = (
        text("/proc/stat"),
        text("/proc/meminfo"),
        text("/proc/loadavg"),
        text("/proc/diskstats"),
        text("/proc/net/dev"),
        text("/proc/self/stat"),
    );
    let psi: Vec<String> = PSI.iter().map(|p| text(p)).collect();
    eprintln!(
        "captured: /proc/stat {} B ({} lines), meminfo {} B, diskstats {} lines, net/dev {} lines",
        stat.len(),
        stat.lines().count(),
        meminfo.len(),
        diskstats.lines().count(),
        netdev.lines().count()
    );

    // Both must read the same numbers before their costs are compared.
    let si = procfs::current_system_info();
    assert_eq!(
        ours::parse_stat(&stat).expect("stat"),
        stat_of(&KernelStats::from_buf_read(stat.as_bytes(), si).expect("stat"))
    );
    assert_eq!(
        ours::parse_meminfo(&meminfo).expect("meminfo"),
        mem_of(&Meminfo::from_buf_read(meminfo.as_bytes()).expect("meminfo"))
    );
    assert_eq!(
        ours::parse_diskstats(&diskstats).expect("diskstats"),
        disks_of(DiskStats::from_buf_read(diskstats.as_bytes()).expect("diskstats"))
    );
    let mut a = ours::parse_net_dev(&netdev).expect("net/dev");
    let mut b = nets_of(InterfaceDeviceStatus::from_buf_read(netdev.as_bytes()).expect("net/dev"));
    a.sort_by(|x, y| x.name.cmp(&y.name));
    b.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(a, b);
    assert_eq!(
        ours::parse_pid_stat(&pidstat).expect("pid stat"),
        pid_of(&Stat::from_read(pidstat.as_bytes()).expect("pid stat"))
    );

    let mut collector = Collector::new(std::env::temp_dir(), true);
    collector.sample().expect("first sample");

    let mut parts: Vec<Part> = Vec::new();
    macro_rules! parse_only {
        ($name:expr, $text:expr, $ours:expr, $theirs:expr) => {{
            let (t1, t2) = ($text.clone(), $text.clone());
            parts.push(part(
                $name,
                200,
                move || {
                    black_box($ours(black_box(t1.as_str())));
                },
                move || {
                    black_box($theirs(black_box(t2.as_bytes())));
                },
            ));
        }};
    }
    parse_only!(
        "parse /proc/stat",
        stat,
        |t| ours::parse_stat(t).expect("stat"),
        |b| {
            stat_of(&KernelStats::from_buf_read(b, procfs::current_system_info()).expect("stat"))
        }
    );
    parse_only!(
        "parse meminfo",
        meminfo,
        |t| ours::parse_meminfo(t).expect("m"),
        |b| { mem_of(&Meminfo::from_buf_read(b).expect("meminfo")) }
    );
    let psi_all = psi.join("\u{0}");
    parse_only!(
        "parse pressure ×3",
        psi_all,
        |t: &str| {
            let mut it = t.split('\u{0}');
            [(); 3].map(|()| ours::parse_pressure(it.next().expect("psi")).expect("psi"))
        },
        |b: &[u8]| {
            let mut it = b.split(|&c| c == 0);
            let c = CpuPressure::from_buf_read(it.next().expect("cpu")).expect("psi");
            let m = MemoryPressure::from_buf_read(it.next().expect("mem")).expect("psi");
            let i = IoPressure::from_buf_read(it.next().expect("io")).expect("psi");
            [
                psi_of(&c.some, &c.full),
                psi_of(&m.some, &m.full),
                psi_of(&i.some, &i.full),
            ]
        }
    );
    parse_only!(
        "parse loadavg",
        loadavg,
        |t| ours::parse_loadavg(t).expect("l"),
        |b| { load_of(&LoadAverage::from_read(b).expect("loadavg")) }
    );
    parse_only!(
        "parse diskstats",
        diskstats,
        |t| ours::parse_diskstats(t).expect("d"),
        |b| { disks_of(DiskStats::from_buf_read(b).expect("diskstats")) }
    );
    parse_only!(
        "parse net/dev",
        netdev,
        |t| ours::parse_net_dev(t).expect("n"),
        |b| { nets_of(InterfaceDeviceStatus::from_buf_read(b).expect("net/dev")) }
    );
    parse_only!(
        "parse /proc/PID/stat",
        pidstat,
        |t| ours::parse_pid_stat(t).expect("p"),
        |b| { pid_of(&Stat::from_read(b).expect("pid stat")) }
    );
    let all_texts = [
        stat.clone(),
        meminfo.clone(),
        loadavg.clone(),
        diskstats.clone(),
        netdev.clone(),
    ];
    let (psi1, all1) = (psi.clone(), all_texts.clone());
    let (psi2, all2) = (psi.clone(), all_texts);
    parts.push(part(
        "parse all host files",
        100,
        move || {
            let [s, m, l, d, n] = &all1;
            black_box((
                ours::parse_stat(s).expect("s"),
                ours::parse_meminfo(m).expect("m"),
                ours::parse_loadavg(l).expect("l"),
                ours::parse_diskstats(d).expect("d"),
                ours::parse_net_dev(n).expect("n"),
            ));
            for p in &psi1 {
                black_box(ours::parse_pressure(p).expect("psi"));
            }
        },
        move || {
            let [s, m, l, d, n] = &all2;
            let si = procfs::current_system_info();
            black_box((
                stat_of(&KernelStats::from_buf_read(s.as_bytes(), si).expect("s")),
                mem_of(&Meminfo::from_buf_read(m.as_bytes()).expect("m")),
                load_of(&LoadAverage::from_read(l.as_bytes()).expect("l")),
                disks_of(DiskStats::from_buf_read(d.as_bytes()).expect("d")),
                nets_of(InterfaceDeviceStatus::from_buf_read(n.as_bytes()).expect("n")),
            ));
            let c = CpuPressure::from_buf_read(psi2[0].as_bytes()).expect("psi");
            let m = MemoryPressure::from_buf_read(psi2[1].as_bytes()).expect("psi");
            let i = IoPressure::from_buf_read(psi2[2].as_bytes()).expect("psi");
            black_box((c, m, i));
        },
    ));

    // Read + parse, per file: ours through one reused buffer (as the collector reads), the crate
    // through its own `current()` (which opens a BufReader per file).
    macro_rules! io_part {
        ($name:expr, $path:expr, $ours:expr, $theirs:expr) => {{
            let mut buf = String::with_capacity(4096);
            parts.push(part(
                $name,
                20,
                move || {
                    read_into($path, &mut buf);
                    black_box($ours(buf.as_str()));
                },
                move || {
                    black_box($theirs());
                },
            ));
        }};
    }
    io_part!(
        "read /proc/stat",
        "/proc/stat",
        |t| ours::parse_stat(t).expect("s"),
        || { stat_of(&KernelStats::current().expect("stat")) }
    );
    io_part!(
        "read meminfo",
        "/proc/meminfo",
        |t| ours::parse_meminfo(t).expect("m"),
        || { mem_of(&Meminfo::current().expect("meminfo")) }
    );
    io_part!(
        "read loadavg",
        "/proc/loadavg",
        |t| ours::parse_loadavg(t).expect("l"),
        || { load_of(&LoadAverage::current().expect("loadavg")) }
    );
    io_part!(
        "read diskstats",
        "/proc/diskstats",
        |t| ours::parse_diskstats(t).expect("d"),
        || { disks_of(DiskStats::current().expect("diskstats")) }
    );
    io_part!(
        "read net/dev",
        "/proc/net/dev",
        |t| ours::parse_net_dev(t).expect("n"),
        || { nets_of(InterfaceDeviceStatus::current().expect("net/dev")) }
    );
    io_part!(
        "read pressure/cpu",
        PSI[0],
        |t| ours::parse_pressure(t).expect("p"),
        || {
            let c = CpuPressure::current().expect("psi");
            psi_of(&c.some, &c.full)
        }
    );
    io_part!(
        "read /proc/self/stat",
        "/proc/self/stat",
        |t| ours::parse_pid_stat(t).expect("p"),
        || { pid_of(&Process::myself().expect("myself").stat().expect("stat")) }
    );

    // Totals: every /proc file of a sample; then the crate's parsers behind our buffer.
    let mut b1 = String::with_capacity(4096);
    parts.push(part(
        "read all host files (crate: current())",
        10,
        move || {
            black_box(all_ours(&mut b1));
        },
        || {
            black_box(all_theirs());
        },
    ));
    let (mut b2, mut b3) = (String::with_capacity(4096), String::with_capacity(4096));
    parts.push(part(
        "read all host files (crate: our buffer)",
        10,
        move || {
            black_box(all_ours(&mut b2));
        },
        move || {
            black_box(all_theirs_buf(&mut b3));
        },
    ));
    parts.push(part(
        "process_snapshot",
        10,
        || {
            black_box(process_snapshot().expect("process snapshot"));
        },
        || {
            black_box(process_theirs(false));
        },
    ));
    parts.push(part(
        "process_snapshot (crate, fds listed as ours)",
        10,
        || {
            black_box(process_snapshot().expect("process snapshot"));
        },
        || {
            black_box(process_theirs(true));
        },
    ));

    // The whole host sample (statvfs, NVML when present, deltas) in the same rotation: the crate's
    // figure for it is this plus, per round, the difference of "read all host files".
    let mut full: Vec<f64> = Vec::new();

    for round in 0..rounds {
        for p in &mut parts {
            let (o, t) = if round % 2 == 0 {
                let o = time(&mut *p.ours, p.batch);
                (o, time(&mut *p.theirs, p.batch))
            } else {
                let t = time(&mut *p.theirs, p.batch);
                (time(&mut *p.ours, p.batch), t)
            };
            p.t_ours.push(o);
            p.t_theirs.push(t);
        }
        full.push(time(
            &mut || {
                black_box(collector.sample().expect("sample"));
            },
            10,
        ));
    }

    println!("rounds: {rounds} (medians over rounds; ratio = median of per-round crate/ours)");
    println!(
        "{:<50} {:>10} {:>10} {:>7}",
        "part", "ours", "procfs", "ratio"
    );
    let mut diff_current = Vec::new();
    let mut diff_buf = Vec::new();
    for p in &mut parts {
        let mut ratios: Vec<f64> = p
            .t_theirs
            .iter()
            .zip(&p.t_ours)
            .map(|(t, o)| t / o)
            .collect();
        if p.name == "read all host files (crate: current())" {
            diff_current = p
                .t_theirs
                .iter()
                .zip(&p.t_ours)
                .map(|(t, o)| t - o)
                .collect();
        }
        if p.name == "read all host files (crate: our buffer)" {
            diff_buf = p
                .t_theirs
                .iter()
                .zip(&p.t_ours)
                .map(|(t, o)| t - o)
                .collect();
        }
        println!(
            "{:<50} {:>10} {:>10} {:>6.2}×",
            p.name,
            fmt_us(median(&mut p.t_ours)),
            fmt_us(median(&mut p.t_theirs)),
            median(&mut ratios)
        );
    }
    let est = |diff: &[f64]| -> (f64, f64) {
        let mut with: Vec<f64> = full.iter().zip(diff).map(|(f, d)| f + d).collect();
        let mut ratio: Vec<f64> = full.iter().zip(diff).map(|(f, d)| (f + d) / f).collect();
        (median(&mut with), median(&mut ratio))
    };
    let (cur, cur_r) = est(&diff_current);
    let (buf, buf_r) = est(&diff_buf);
    let full_med = median(&mut full.clone());
    println!(
        "{:<50} {:>10} {:>10} {:>6.2}×",
        "host sample (Collector::sample; crate: current())",
        fmt_us(full_med),
        fmt_us(cur),
        cur_r
    );
    println!(
        "{:<50} {:>10} {:>10} {:>6.2}×",
        "host sample (crate: our buffer)",
        fmt_us(full_med),
        fmt_us(buf),
        buf_r
    );
}
