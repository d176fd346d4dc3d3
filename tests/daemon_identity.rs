//! libbus checks whom it reaches on a Unix socket: the daemon must run as
//! the expected uid (by default this process's own or root), and a
//! mismatch is refused before anything, not even `Hello`, is sent.

use bus_tests::{server_info, within, TestBus};
use libbus::{Bus, ConnectOptions, Error};

#[tokio::test]
async fn a_daemon_of_another_uid_is_refused_before_anything_is_sent() {
    let bus = TestBus::start();
    let me = nix::unistd::geteuid().as_raw();
    let probe = bus.client("probe").await;
    let before = server_info(&probe).await.total_connections;

    // Expecting the daemon to run as someone it does not run as.
    let other = me.wrapping_add(4242);
    let opts = ConnectOptions::default().name("wary").daemon_uid(other);
    let err = within("connect", Bus::connect_with(&bus.address(), opts))
        .await
        .expect_err("the daemon runs as another uid");
    match &err {
        Error::UntrustedDaemon { uid, expected, .. } => {
            assert_eq!(*uid, me, "{err}");
            assert!(expected.contains(&other.to_string()), "{err}");
        }
        e => panic!("expected UntrustedDaemon, got {e}"),
    }
    assert!(err.to_string().contains("refusing to talk to it"), "{err}");
    // Nothing was sent: no handshake was completed for it.
    assert_eq!(server_info(&probe).await.total_connections, before);

    // The default trusts this process's own uid (and root), and naming the
    // daemon's real uid works too.
    within("default connect", Bus::connect(&bus.address()))
        .await
        .expect("own uid trusted by default");
    let opts = ConnectOptions::default().daemon_uid(me);
    within("explicit connect", Bus::connect_with(&bus.address(), opts))
        .await
        .expect("the named uid");
}
