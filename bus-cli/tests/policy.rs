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
