//! The access policy, tested with `bus-cli` running under other uids
//! (`setpriv`, so this needs root; skipped with a printed reason otherwise).

mod common;

use std::{os::unix::fs::PermissionsExt, path::PathBuf, process::Command};

use busd::{Config, Daemon};
use common::{run, stdout, CLI};

struct Setup {
    daemon: Daemon,
    /// A copy of bus-cli that any uid can execute.
    cli: PathBuf,
    _dir: tempfile::TempDir,
}

/// A daemon whose socket other uids can reach (directory 0755, socket
/// 0666), so only the daemon's own policy decides. `None` when not root.
fn setup(adjust: impl FnOnce(&mut Config)) -> Option<Setup> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: switching uids needs root");
        return None;
    }
    let version = common::spawn(
        Command::new("setpriv")
            .arg("--version")
            .stdout(std::process::Stdio::null()),
    )
    .and_then(|mut c| c.wait());
    if version.is_err() {
        println!("skipped: setpriv (util-linux) is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cli = dir.path().join("bus-cli");
    common::copy_executable(CLI, &cli);
    let mut config = Config::with_socket(dir.path().join("busd.sock"));
    config.socket_mode = 0o666;
    adjust(&mut config);
    let daemon = Daemon::start(config).unwrap();
    Some(Setup {
        daemon,
        cli,
        _dir: dir,
    })
}

impl Setup {
    /// `bus-cli ARGS` as `uid`:`gid` (no supplementary groups).
    fn cli_as(&self, uid: u32, gid: u32, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(&self.cli)
            .args(args)
            .env("BUS_ADDRESS", self.daemon.address().to_string());
        run(c)
    }

    fn cli_as_root(&self, args: &[&str]) -> std::process::Output {
        self.cli_as(0, 0, args)
    }

    /// `setpriv` running bus-cli as `uid`:`gid` with supplementary
    /// `groups`.
    fn setpriv(&self, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}"));
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            c.arg(format!("--groups={}", list.join(",")));
        }
        c.arg(&self.cli)
            .args(args)
            .env("BUS_ADDRESS", self.daemon.address().to_string());
        c
    }

    /// A long-running bus-cli as another uid (killed on drop).
    fn spawn_as(&self, uid: u32, gid: u32, args: &[&str]) -> Running {
        let mut c = self.setpriv(uid, gid, &[], args);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Running(Some(common::spawn(&mut c).unwrap()))
    }

    /// Waits (bounded) until root's `list` shows a subscription to `pattern`.
    fn until_subscribed(&self, pattern: &str) {
        let start = std::time::Instant::now();
        loop {
            let list = stdout(&self.cli_as_root(&["list", "--json"]));
            if list.contains(&format!("\"pattern\": \"{pattern}\"")) {
                return;
            }
            assert!(
                start.elapsed() < bus_test_support::WAIT,
                "no subscription to {pattern}: {list}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A child process, killed on drop unless waited for.
struct Running(Option<std::process::Child>);

impl Running {
    /// True once it has exited.
    fn exited(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| c.try_wait().unwrap().is_some())
    }

    /// Waits (bounded) for it to exit: its status and stderr.
    fn exit(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.0.take().unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > bus_test_support::WAIT {
                let _ = child.kill();
                panic!("bus-cli did not exit");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn permissions(f: impl FnOnce(&mut busd::acl::Permissions)) -> busd::acl::Permissions {
    let mut p = busd::acl::Permissions::default();
    f(&mut p);
    p
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs as `uid` and expects a refusal naming `expected`.
fn denied(s: &Setup, uid: u32, args: &[&str], expected: &str) {
    let out = s.cli_as(uid, uid, args);
    assert!(!out.status.success(), "{args:?} as {uid} was allowed");
    assert!(
        stderr(&out).contains(expected),
        "{args:?} as {uid}: {}",
        stderr(&out)
    );
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn other_uids_are_denied_by_default() {
    let Some(s) = setup(|_| {}) else { return };
    let out = s.cli_as(65534, 65534, &["list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission denied for uid 65534"),
        "{}",
        stderr(&out)
    );
    // Counted, and visible in `bus-cli info`.
    let info = stdout(&s.cli_as_root(&["info", "--json"]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(info["refused"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r[0] == "permission_denied" && r[1] == 1));
}

#[test]
fn allow_uid_and_allow_gid_widen_access() {
    let Some(s) = setup(|c| {
        c.allow_uid = vec![65534];
        c.allow_gid = vec![4242];
    }) else {
        return;
    };
    let out = stdout(&s.cli_as(65534, 65534, &["list"]));
    assert!(out.contains("uid 65534"), "lists itself: {out}");
    // Another uid whose primary group is allowed.
    stdout(&s.cli_as(4321, 4242, &["send", "hello", "from a group member"]));
    // Neither its uid nor its group: denied.
    let out = s.cli_as(4321, 4343, &["list"]);
    assert!(
        stderr(&out).contains("permission denied for uid 4321"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn kick_is_for_the_daemon_uid_and_root_only() {
    let Some(s) = setup(|c| c.allow_uid = vec![65534]) else {
        return;
    };
    // A long-running subscriber to kick.
    let mut victim = common::spawn(
        Command::new(&s.cli)
            .args(["sub", "victim.>"])
            .env("BUS_ADDRESS", s.daemon.address().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    )
    .unwrap();
    let id = (0..200)
        .find_map(|_| {
            let list = stdout(&s.cli_as_root(&["list", "--json"]));
            let list: serde_json::Value = serde_json::from_str(&list).unwrap();
            let id = list.as_array().unwrap().iter().find_map(|c| {
                let subs = c["subs"].as_array().unwrap();
                subs.iter()
                    .any(|sub| sub["pattern"] == "victim.>")
                    .then(|| c["id"].as_u64().unwrap())
            });
            if id.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            id
        })
        .expect("the subscriber shows up in the list");

    // An allowed, but unprivileged, uid may look but not kick.
    let out = s.cli_as(65534, 65534, &["kick", &id.to_string()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission denied for uid 65534: only uid 0 and root may do this"),
        "{}",
        stderr(&out)
    );
    // Root may.
    let out = stdout(&s.cli_as_root(&["kick", &id.to_string()]));
    assert_eq!(out.trim(), format!("closed connection {id} (bus-cli)"));
    let status = (0..400).find_map(|_| {
        let st = victim.try_wait().unwrap();
        if st.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        st
    });
    let Some(status) = status else {
        let _ = victim.kill();
        let _ = victim.wait();
        panic!("kicked bus-cli sub did not exit");
    };
    assert!(!status.success());
    let err = victim.wait_with_output().unwrap().stderr;
    assert!(
        String::from_utf8_lossy(&err).contains("closed by an administrator"),
        "{}",
        String::from_utf8_lossy(&err)
    );
}

#[test]
fn permissions_per_subject_name_and_group() {
    let Some(s) = setup(|c| {
        c.permissions = vec![
            permissions(|p| {
                p.uid = Some(5001);
                p.publish = strings(&["{uid}.>", "shared.>"]);
                p.publish_deny = strings(&["shared.secret.>"]);
                p.subscribe = strings(&["{uid}.>", "shared.>"]);
                p.subscribe_deny = strings(&["shared.secret.>"]);
                p.own = strings(&["org.u5001"]);
                p.call = strings(&["org.svc"]);
            }),
            permissions(|p| {
                p.gid = Some(7000);
                p.publish = strings(&["staff.>"]);
                p.subscribe = strings(&["staff.>"]);
            }),
            permissions(|p| {
                p.uid = Some(5003);
                p.publish = strings(&[">"]);
                p.subscribe = strings(&[">"]);
                p.privileged = true;
            }),
        ];
    }) else {
        return;
    };
    // Publish: `{uid}` is the peer's own subtree; deny wins over allow.
    stdout(&s.cli_as(5001, 5001, &["send", "5001.a", "x"]));
    stdout(&s.cli_as(5001, 5001, &["send", "shared.news", "x"]));
    denied(
        &s,
        5001,
        &["send", "5002.a", "x"],
        r#"permission denied: publish "5002.a" (rule: uid 5001 publish (no pattern allows it))"#,
    );
    denied(
        &s,
        5001,
        &["send", "shared.secret.key", "x"],
        r#"(rule: uid 5001 publish_deny "shared.secret.>")"#,
    );
    // Subscribe: within an allow pattern, clear of any deny one, and
    // never watching unless privileged.
    denied(
        &s,
        5001,
        &["sub", "shared.secret.>"],
        "permission denied: subscribe",
    );
    denied(&s, 5001, &["sub", ">"], "permission denied: subscribe");
    denied(&s, 5001, &["sub", "_INBOX.>"], "permission denied: subscribe");
    // Own and call.
    denied(
        &s,
        5001,
        &["reply", "--name", "org.other", "--echo"],
        "permission denied: own",
    );
    denied(&s, 5001, &["call", "org.other", "m"], "permission denied: call");
    let out = s.cli_as(5001, 5001, &["call", "org.svc", "m"]);
    assert!(stderr(&out).contains("no responders"), "{}", stderr(&out));
    let owner = s.spawn_as(
        5001,
        5001,
        &["reply", "--name", "org.u5001", "--echo", "--count", "1"],
    );
    let reply = (0..500).find_map(|_| {
        let out = s.cli_as_root(&["call", "org.u5001", "m", "hello"]);
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        None
    });
    assert_eq!(reply.as_deref().map(str::trim), Some("hello"));
    assert!(owner.exit().0.success());

    // A supplementary group names its entry; without it, uid 5002 is
    // nobody the policy lets in.
    let out = s.setpriv(5002, 5002, &[7000], &["send", "staff.x", "y"]);
    stdout(&run(out));
    let out = run(s.setpriv(5002, 5002, &[7000], &["send", "shared.x", "y"]));
    assert!(
        stderr(&out).contains("rule: gid 7000 publish"),
        "{}",
        stderr(&out)
    );
    denied(
        &s,
        5002,
        &["send", "staff.x", "y"],
        "permission denied for uid 5002",
    );

    // Privileged: may watch events.
    let mut watcher = s.spawn_as(5003, 5003, &["sub", "$BUS.event.>", "--count", "1"]);
    // Each connection made here is an event; the watcher takes one and exits.
    let start = std::time::Instant::now();
    while !watcher.exited() {
        assert!(
            start.elapsed() < bus_test_support::WAIT,
            "the watcher saw no event"
        );
        stdout(&s.cli_as_root(&["list"]));
    }
    assert!(watcher.exit().0.success());

    // Others see only their own uid's connections in `list`.
    let _root_sub = s.spawn_as(0, 0, &["sub", "root.only"]);
    s.until_subscribed("root.only");
    let list = stdout(&s.cli_as(5001, 5001, &["list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let uids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["peer"]["Unix"]["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(uids, vec![5001], "{list}");
    let all = stdout(&s.cli_as(5003, 5003, &["list"]));
    assert!(all.contains("uid 0"), "{all}");

    // Every denial is counted per principal and rule.
    let info = stdout(&s.cli_as_root(&["info"]));
    assert!(
        info.contains(r#"uid 5001: uid 5001 publish_deny "shared.secret.>""#),
        "{info}"
    );
}

#[test]
fn replies_pass_and_inboxes_stay_private() {
    let Some(s) = setup(|c| {
        c.permissions = vec![
            // A responder that may publish nothing itself.
            permissions(|p| {
                p.uid = Some(5001);
                p.subscribe = strings(&["svc.>"]);
            }),
            // A nosy user that may subscribe to anything but watching.
            permissions(|p| {
                p.uid = Some(5004);
                p.subscribe = strings(&[">"]);
                p.publish = strings(&[">"]);
            }),
        ];
    }) else {
        return;
    };
    let responder = s.spawn_as(5001, 5001, &["reply", "svc.echo", "--echo", "--count", "1"]);
    s.until_subscribed("svc.echo");
    let reply = stdout(&s.cli_as_root(&["request", "svc.echo", "hi"]));
    assert_eq!(reply.trim(), "hi");
    assert!(responder.exit().0.success());
    denied(&s, 5001, &["send", "svc.echo", "x"], "permission denied: publish");
    for pattern in [">", "_INBOX.>", "*.*.>", "_INBOX.*.*"] {
        denied(&s, 5004, &["sub", pattern], "permission denied: subscribe");
    }
    // A reply inbox is its first user's: another uid cannot take it.
    let _mine = s.spawn_as(5004, 5004, &["sub", "_INBOX.feedc0de.>"]);
    s.until_subscribed("_INBOX.feedc0de.>");
    denied(
        &s,
        5001,
        &["sub", "_INBOX.feedc0de.>"],
        "another user's reply inbox",
    );
}

#[test]
fn a_reload_ends_subscriptions_the_new_policy_denies() {
    let entry = |subscribe: &[&str]| {
        permissions(|p| {
            p.uid = Some(5001);
            p.subscribe = strings(subscribe);
        })
    };
    let mut config = None;
    let Some(s) = setup(|c| {
        c.permissions = vec![entry(&["shared.>"])];
        config = Some(c.clone());
    }) else {
        return;
    };
    let sub = s.spawn_as(5001, 5001, &["sub", "shared.>"]);
    s.until_subscribed("shared.>");
    let mut tighter = config.unwrap();
    tighter.permissions = vec![entry(&["shared.news"])];
    assert_eq!(s.daemon.reload(tighter), Ok(vec![]));
    let (status, err) = sub.exit();
    assert!(!status.success());
    assert!(err.contains("permission denied: subscribe \"shared.>\""), "{err}");
}
