//! The `busd` binary as a process: socket file handling and signals.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{wait_listening, Proc, BUSD, WAIT};

fn spawn(socket: &Path) -> Proc {
    spawn_with(socket, &[])
}

fn spawn_with(socket: &Path, args: &[&str]) -> Proc {
    let child = Command::new(BUSD)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn busd");
    Proc(child)
}

fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = p.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(start.elapsed() < WAIT, "busd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Threads of `p` named like the daemon's runtime workers.
fn worker_threads(p: &Proc) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", p.0.id()))
        .expect("/proc/PID/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "busd-worker")
        .count()
}

fn signal(p: &Proc, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.0.id() as i32), sig).expect("kill");
}

#[test]
fn socket_and_directory_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/bus/busd.sock");
    let _d = spawn(&socket);
    wait_listening(&socket);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600);
}

#[test]
fn socket_mode_is_exact_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    // The test process's umask (typically 022) would turn 666 into 644.
    let child = Command::new(BUSD)
        .arg("--socket")
        .arg(&socket)
        .args(["--socket-mode", "666"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn busd");
    let _d = Proc(child);
    wait_listening(&socket);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o666
    );
}

#[test]
fn sigterm_removes_socket_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let mut d = spawn(&socket);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut d).success());
    assert!(!socket.exists(), "socket file removed on shutdown");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let mut d = spawn(&socket);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGINT);
    assert!(wait_exit(&mut d).success());
    assert!(!socket.exists());
}

#[test]
fn second_daemon_on_live_socket_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let _first = spawn(&socket);
    wait_listening(&socket);
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(&socket)
        .output()
        .expect("run second busd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another bus daemon is already listening"),
        "{stderr}"
    );
    // The first daemon's socket is untouched.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    // A socket file with nothing listening, as left by a crashed daemon.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut d = spawn(&socket);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut d).success());
}

#[test]
fn kill_9_leaves_a_stale_socket_that_the_next_daemon_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let mut d = spawn(&socket);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut d);
    assert!(socket.exists(), "SIGKILL leaves the file behind");
    let _d2 = spawn(&socket);
    wait_listening(&socket);
}

#[test]
fn regular_file_in_the_way_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    std::fs::write(&socket, "precious").unwrap();
    let out = Command::new(BUSD).arg("--socket").arg(&socket).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

#[test]
fn workers_sets_the_number_of_runtime_threads() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let half = (cpus / 2).max(1);
    for (args, want) in [
        (&["--workers", "3"][..], 3),
        (&["--workers", "1"][..], 1),
        (&["--workers", "0"][..], half),
        (&[][..], half),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("busd.sock");
        let p = spawn_with(&socket, args);
        wait_listening(&socket);
        // A worker names itself once it runs, which may be just after the
        // socket listens: poll (bounded) until the names are all there.
        let start = Instant::now();
        let mut seen = worker_threads(&p);
        while seen != want && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(10));
            seen = worker_threads(&p);
        }
        assert_eq!(seen, want, "busd {args:?} on {cpus} CPUs");
    }
}

#[test]
fn bad_flag_values_are_clear_errors() {
    let out = Command::new(BUSD).args(["--max-frame", "lots"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-frame"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["--max-pending", "1KiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_pending"));
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["--link-ping-interval", "0s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("link_ping_interval"));
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["--bridge", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be tcp://host:port or tls://host:port"));
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["--bridge", "tls://127.0.0.1:1"])
        .env_remove("BUS_CA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bridge-ca"));
}

#[test]
fn sighup_keeps_the_daemon_serving() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let mut d = spawn_with(&socket, &[]);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGHUP);
    // Still serving after the signal was handled: a connection is accepted
    // and answered (a handshake needs the daemon's reader, not the kernel).
    let served = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bus = libbus::Bus::connect(&libbus::Address::Unix(socket.clone())).await?;
            bus.flush().await
        })
    };
    let start = Instant::now();
    for _ in 0..3 {
        served().expect("busd serves after SIGHUP");
    }
    assert!(d.0.try_wait().unwrap().is_none(), "busd exited on SIGHUP");
    assert!(start.elapsed() < WAIT);
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut d).success());
    assert!(!socket.exists(), "socket file removed on shutdown");
}

/// Three daemons started at once on one path, with and without a stale
/// socket file there, many rounds: exactly one serves, the others exit 1
/// saying so, and the socket file is the survivor's.
#[test]
fn simultaneous_starts_leave_exactly_one_daemon() {
    const ROUNDS: usize = 15;
    for round in 0..ROUNDS {
        for stale in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("busd.sock");
            if stale {
                // A socket file nothing listens on.
                drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
            }
            let mut procs: Vec<Proc> = (0..3).map(|_| spawn(&socket)).collect();
            // Wait until all but one have exited (bounded).
            let start = Instant::now();
            let mut exits = Vec::new();
            while exits.len() < 2 {
                assert!(
                    start.elapsed() < WAIT,
                    "round {round}: more than one daemon kept running"
                );
                for (i, p) in procs.iter_mut().enumerate() {
                    if !exits.iter().any(|(j, _)| *j == i) {
                        if let Some(status) = p.0.try_wait().unwrap() {
                            exits.push((i, status));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(exits.len(), 2, "round {round}, stale {stale}: {exits:?}");
            for (i, status) in &exits {
                assert!(!status.success(), "round {round}: a loser exited 0");
                let mut err = String::new();
                use std::io::Read;
                procs[*i]
                    .0
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(
                    err.contains("another bus daemon is already listening"),
                    "round {round}: {err}"
                );
            }
            let survivor = (0..3).find(|i| !exits.iter().any(|(j, _)| j == i)).unwrap();
            wait_listening(&socket);
            assert!(
                procs[survivor].0.try_wait().unwrap().is_none(),
                "round {round}: the survivor exited"
            );
            // The socket is the survivor's: its SIGTERM removes the file.
            signal(&procs[survivor], nix::sys::signal::Signal::SIGTERM);
            assert!(wait_exit(&mut procs[survivor]).success());
            assert!(
                !socket.exists(),
                "round {round}: the socket file is not the survivor's"
            );
        }
    }
}

/// busd refuses to use a directory through which another user could take
/// the socket over; a sticky one (like /tmp) is fine.
#[test]
fn unsafe_socket_directories_are_refused() {
    let refused = |dir: &Path, why: &str| {
        let out = Command::new(BUSD)
            .arg("--socket")
            .arg(dir.join("busd.sock"))
            .output()
            .expect("run busd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: started", dir.display());
        assert!(
            err.contains("refusing the socket directory") && err.contains(why),
            "{err}"
        );
        assert!(!dir.join("busd.sock").exists());
    };
    let base = tempfile::tempdir().unwrap();
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&open, "others may write to it");

    let real = base.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    refused(&link, "symlink");

    let sticky = base.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let d = spawn(&sticky.join("busd.sock"));
    wait_listening(&sticky.join("busd.sock"));
    drop(d);

    if nix::unistd::geteuid().is_root() {
        let theirs = base.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = nix::unistd::Uid::from_raw(65534);
        nix::unistd::chown(&theirs, Some(nobody), None).unwrap();
        refused(&theirs, "owned by uid 65534");
    } else {
        println!("skipped the other-owner case: chown needs root");
    }
}

/// At the fd limit, accept fails: each failure is counted (`accept_failed`
/// in `bus-cli info`) and the warning is logged at a bounded rate.
#[test]
fn accept_failures_at_the_fd_limit_are_counted_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 48 && exec {BUSD} --socket \"$0\"",))
        .arg(&socket)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn busd with a low fd limit");
    let mut d = Proc(child);
    wait_listening(&socket);
    // More connections than the daemon has descriptors for, held for two
    // seconds (the duration is the point: the warning's rate is measured).
    let held: Vec<_> = (0..80)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok())
        .collect();
    assert!(held.len() > 48, "only {} connections", held.len());
    let held_for = Duration::from_secs(2);
    std::thread::sleep(held_for);
    drop(held);
    // Once descriptors are free again, the daemon answers and counts.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let failed = rt.block_on(async {
        let addr = libbus::Address::Unix(socket.clone());
        let bus = common::within("a connection after the storm", async {
            loop {
                match libbus::Bus::connect(&addr).await {
                    Ok(bus) => break bus,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        let info = common::info(&bus).await;
        info.refused
            .iter()
            .find(|(name, _)| name == "accept_failed")
            .map_or(0, |(_, n)| *n)
    });
    assert!(failed > 0, "no accept failure counted");
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut d).success());
    let mut err = String::new();
    use std::io::Read;
    d.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let lines = err.lines().filter(|l| l.contains("accept failed")).count();
    // At most 5 a second (LOG_LINES_PER_SECOND), over about 2 s plus the
    // time to reconnect.
    println!("accept failures counted: {failed}, warnings logged: {lines}");
    assert!(lines >= 1, "no warning logged: {err}");
    assert!(lines <= 5 * 4, "{lines} warnings in about {held_for:?}: {err}");
}

/// The log: no ANSI escapes when stderr is not a terminal; `--log-format
/// json` is one JSON object per line; and on the journal's stream
/// (`JOURNAL_STREAM` naming stderr's device and inode) each line starts with
/// its syslog priority and carries no timestamp.
#[test]
fn the_log_suits_its_reader() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], journal: bool| -> String {
        let socket = dir.path().join("busd.sock");
        let log_path = dir.path().join("busd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let meta = log.metadata().unwrap();
        let mut cmd = Command::new(BUSD);
        cmd.arg("--socket")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let mut d = Proc(cmd.spawn().unwrap());
        wait_listening(&socket);
        signal(&d, nix::sys::signal::Signal::SIGTERM);
        assert!(wait_exit(&mut d).success());
        std::fs::read_to_string(&log_path).unwrap()
    };

    let text = run(&[], false);
    assert!(text.contains("busd listening"), "{text}");
    assert!(!text.contains('\x1b'), "no colour into a file: {text:?}");

    let json = run(&["--log-format", "json"], false);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "busd listening"),
        "{json}"
    );

    let journal = run(&[], true);
    for line in journal.lines() {
        assert!(line.starts_with("<6>") || line.starts_with("<4>"), "{line}");
        assert!(!line[3..].starts_with("20"), "no timestamp of our own: {line}");
    }
    assert!(journal.contains("<6>busd::server: busd listening"), "{journal}");
}

/// Without `--config`, busd reads `$XDG_CONFIG_HOME/bus/busd.toml` if it
/// exists (before `/etc/bus/busd.toml`), and `--print-config` says which
/// file it used.
#[test]
fn the_config_file_is_found_on_the_search_path() {
    let home = tempfile::tempdir().unwrap();
    let print = || {
        let out = Command::new(BUSD)
            .arg("--print-config")
            .env("XDG_CONFIG_HOME", home.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    if Path::new("/etc/bus/busd.toml").exists() {
        println!(
            "SKIPPED (part): /etc/bus/busd.toml exists here, so the embedded defaults are not what busd uses"
        );
    } else {
        let defaults = print();
        assert!(defaults.starts_with("# embedded defaults"), "{defaults}");
        assert!(defaults.contains("max_subscriptions = 10000"), "{defaults}");
    }
    let file = home.path().join("bus/busd.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "max_subscriptions = 77\n").unwrap();
    let found = print();
    assert!(
        found.starts_with(&format!("# from {} and the flags", file.display())),
        "{found}"
    );
    assert!(found.contains("max_subscriptions = 77"), "{found}");
}

/// SIGHUP reads the configuration file again: a changed limit takes effect
/// without dropping the connection that watches it; a bad file is one
/// error line naming the problem, and the running configuration stays;
/// `$BUS.api.config` says which file, and how many reloads.
#[test]
fn sighup_reloads_the_config_file_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let file = dir.path().join("busd.toml");
    std::fs::write(&file, "max_subscriptions = 5\n").unwrap();
    let log_path = dir.path().join("busd.log");
    let mut d = Proc(
        Command::new(BUSD)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(&socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus = rt
        .block_on(libbus::Bus::connect(&libbus::Address::Unix(socket.clone())))
        .unwrap();
    let id = bus.conn_id();
    let limit = |bus: &libbus::Bus| {
        rt.block_on(async {
            let info = common::info(bus).await;
            info.limits
                .iter()
                .find(|(k, _)| k == "max_subscriptions")
                .map(|(_, v)| *v)
        })
    };
    let source = |bus: &libbus::Bus| -> libbus::proto::api::ConfigSource {
        rt.block_on(bus.request_value(libbus::proto::api::CONFIG, &()))
            .unwrap()
    };
    assert_eq!(limit(&bus), Some(5));
    assert_eq!(source(&bus).file.as_deref(), file.to_str());

    std::fs::write(&file, "max_subscriptions = 7\nnode_id = \"elsewhere\"\n").unwrap();
    signal(&d, nix::sys::signal::Signal::SIGHUP);
    let start = Instant::now();
    while limit(&bus) != Some(7) {
        assert!(start.elapsed() < WAIT, "the new limit never took effect");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = source(&bus);
    assert_eq!(s.reloads, 1);
    assert_eq!(s.pending_restart, ["node_id"], "a node id needs a restart");
    assert_eq!(bus.conn_id(), id, "the connection was not dropped");
    rt.block_on(bus.flush()).expect("still served");

    std::fs::write(&file, "max_subscriptions = \"lots\"\n").unwrap();
    signal(&d, nix::sys::signal::Signal::SIGHUP);
    let start = Instant::now();
    let refused = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if let Some(line) = log.lines().find(|l| l.contains("reload refused")) {
            break line.to_owned();
        }
        assert!(start.elapsed() < WAIT, "no refusal logged:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        refused.contains("busd.toml") && refused.contains("max_subscriptions"),
        "{refused}"
    );
    assert_eq!(limit(&bus), Some(7), "the running configuration stays");
    assert_eq!(source(&bus).reloads, 1);
    drop(bus);
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut d).success());
}

/// `busd --manpage` prints its man page, roff generated from its flags.
#[test]
fn the_man_page_is_generated_from_the_flags() {
    let out = Command::new(BUSD).arg("--manpage").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(man.contains(".TH busd 1"), "{man}");
    assert!(
        man.contains("max\\-names\\-per\\-connection"),
        "every flag is there: {man}"
    );
}

#[test]
fn check_config_explains_a_policy_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let file = dir.path().join("busd.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BUSD)
            .arg("--check-config")
            .arg(&file)
            .output()
            .expect("run busd --check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let good = "max_pending = \"16MiB\"\n\n[[permissions]]\nuid = 1000\npublish = [\"{uid}.>\"]\n\n[[permissions]]\ndefault = true\nsubscribe = [\"public.>\"]\n";
    let (code, text) = check(good);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("valid; 2 [[permissions]] entries: uid 1000, default"),
        "{text}"
    );

    // A bad pattern: the line that holds it.
    let (code, text) = check("[[permissions]]\nuid = 1000\npublish = [\"ok.>\"]\nsubscribe = [\"a..b\"]\n");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("line 4 (subscribe = [\"a..b\"])"), "{text}");
    // An entry naming nobody: the line where it starts.
    let (code, text) = check("[[permissions]]\nuid = 1\n\n[[permissions]]\npublish = [\">\"]\n");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("line 4 ([[permissions]]): [[permissions]] entry 2"),
        "{text}"
    );
    // An unknown key: the parser's line.
    let (code, text) = check("[[permissions]]\nuid = 1\npublsh = [\">\"]\n");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("line 3"), "{text}");
}
