//! Remote clients over TCP and TLS: the same `Bus` API, token
//! authentication checked before anything else is accepted, and TLS
//! certificates verified against the configured CA. Loopback only.

use bus_tests::{within, TestBus, TestPki};
use libbus::{
    proto::{self, api, ClientFrame, ErrorCode},
    Address, Bus, ConnectOptions, Error,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const TOKEN: &str = "correct horse battery staple";

fn tcp_bus() -> TestBus {
    TestBus::with_config(|c| {
        c.tcp = Some("127.0.0.1:0".into());
        c.token = Some(TOKEN.into());
    })
}

async fn remote(address: &Address, opts: ConnectOptions) -> Result<Bus, Error> {
    within("remote connect", Bus::connect_with(address, opts)).await
}

/// Sends `frame` first thing on a raw TCP connection to `addr`: the code of
/// the `Error` the daemon answers before it closes.
async fn raw_error(addr: &Address, frame: &ClientFrame<'_>) -> ErrorCode {
    let Address::Tcp(host_port) = addr else {
        unreachable!()
    };
    let mut raw = TcpStream::connect(host_port.as_str()).await.unwrap();
    let mut bytes = Vec::new();
    libbus::codec::encode_into(frame, &mut bytes, u32::MAX).unwrap();
    raw.write_all(&bytes).await.unwrap();
    let mut reply = Vec::new();
    within("close", raw.read_to_end(&mut reply)).await.unwrap();
    match libbus::codec::decode(&reply[4..]).unwrap() {
        proto::ServerFrame::Error { code, .. } => code,
        other => panic!("expected an Error, got {other:?}"),
    }
}

/// Pub/sub both ways between a local and a remote client, and request/reply.
async fn exercise(local: &Bus, remote: &Bus) {
    let mut at_remote = remote.subscribe("greet.>").await.unwrap();
    let mut at_local = local.subscribe("answer").await.unwrap();
    local.publish("greet.remote", "hello over there").await.unwrap();
    let m = within("remote delivery", at_remote.next()).await.unwrap();
    assert_eq!(m.payload(), b"hello over there");
    remote.publish("answer", "hello back").await.unwrap();
    let m = within("local delivery", at_local.next()).await.unwrap();
    assert_eq!(m.payload(), b"hello back");

    let mut svc = local.subscribe("svc.upper").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = svc.next().await {
            let up = String::from_utf8_lossy(req.payload()).to_uppercase();
            let _ = req.respond(up).await;
        }
    });
    let reply = within("request", remote.request("svc.upper", "shout"))
        .await
        .unwrap();
    assert_eq!(reply.payload(), b"SHOUT");
    assert!(matches!(
        remote.request("nobody.home", "hi").await,
        Err(Error::NoResponders { .. })
    ));
}

#[tokio::test]
async fn tcp_client_with_token() {
    let bus = tcp_bus();
    let addr = bus.tcp_address();
    assert!(addr.to_string().starts_with("tcp://127.0.0.1:"), "{addr}");
    let local = bus.client("local").await;
    let far = remote(&addr, ConnectOptions::default().name("far").token(TOKEN))
        .await
        .unwrap();
    exercise(&local, &far).await;

    let list: Vec<api::ConnInfo> = local.request(api::LIST, []).await.unwrap().decode().unwrap();
    let me = list.iter().find(|c| c.name == "far").unwrap();
    assert_eq!(me.transport, "tcp");
    assert!(matches!(&me.peer, api::Peer::Net { addr } if addr.starts_with("127.0.0.1:")));
    let info: api::ServerInfo = local.request(api::INFO, []).await.unwrap().decode().unwrap();
    assert!(info.listen.contains(&addr.to_string()), "{:?}", info.listen);
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused_before_anything_else() {
    let bus = tcp_bus();
    let addr = bus.tcp_address();
    let local = bus.client("watcher").await;
    let mut refusals = local.subscribe(api::EVENT_CONN_REFUSED).await.unwrap();

    for token in [Some("wrong"), None] {
        let mut opts = ConnectOptions::default().name("intruder");
        opts.token = token.map(Into::into);
        match remote(&addr, opts).await {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, ErrorCode::AuthenticationFailed);
                assert_eq!(message, "authentication failed");
            }
            other => panic!("expected authentication failure, got {other:?}"),
        }
        let ev: api::RefusedEvent = within("refused event", refusals.next())
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(ev.transport, "tcp");
        assert_eq!(ev.reason, "authentication failed");
    }

    // Raw: a publish before the handshake is refused and nothing is routed.
    let mut spy = local.subscribe("secret").await.unwrap();
    let sneaky = ClientFrame::Pub(proto::Pub {
        subject: "secret",
        reply_to: None,
        payload: b"sneaky",
    });
    assert_eq!(raw_error(&addr, &sneaky).await, ErrorCode::Protocol);
    local.publish("secret", "control").await.unwrap();
    let m = within("spy", spy.next()).await.unwrap();
    assert_eq!(m.payload(), b"control", "the sneaky publish was never routed");

    let info: api::ServerInfo = local.request(api::INFO, []).await.unwrap().decode().unwrap();
    assert!(
        info.refused.contains(&("auth_failed".into(), 2)),
        "{:?}",
        info.refused
    );
}

#[tokio::test]
async fn tcp_needs_a_token_or_an_explicit_insecure_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = busd::Config::with_socket(dir.path().join("busd.sock"));
    config.tcp = Some("127.0.0.1:0".into());
    match busd::Daemon::start(config.clone()) {
        Err(busd::Error::Config(m)) => assert!(m.contains("--tcp-insecure"), "{m}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    config.tcp_insecure = true;
    let daemon = busd::Daemon::start(config).unwrap();
    let far = remote(
        daemon.tcp_address().unwrap(),
        ConnectOptions::default().name("anyone"),
    )
    .await
    .unwrap();
    far.flush().await.unwrap();
}

#[tokio::test]
async fn tls_client_verifies_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path(), "good");
    let other = TestPki::generate(dir.path(), "other");
    let bus = TestBus::with_config(|c| {
        c.tcp = Some("127.0.0.1:0".into());
        c.token = Some(TOKEN.into());
        c.tls_cert = Some(pki.cert.clone());
        c.tls_key = Some(pki.key.clone());
    });
    let Address::Tls(host_port) = bus.tcp_address() else {
        panic!("expected a tls:// address")
    };
    let port = host_port.rsplit_once(':').unwrap().1.to_owned();
    let local = bus.client("local").await;
    for host in ["localhost", "127.0.0.1"] {
        let addr: Address = format!("tls://{host}:{port}").parse().unwrap();
        let far = remote(
            &addr,
            ConnectOptions::default()
                .name("far")
                .token(TOKEN)
                .ca_file(&pki.ca),
        )
        .await
        .unwrap();
        exercise(&local, &far).await;
        far.close().await.unwrap();
    }
    let list: Vec<api::ConnInfo> = local.request(api::LIST, []).await.unwrap().decode().unwrap();
    assert!(list.iter().all(|c| c.name != "far" || c.transport == "tls"));

    // A certificate from a CA the client does not trust is rejected.
    let addr: Address = format!("tls://localhost:{port}").parse().unwrap();
    match remote(&addr, ConnectOptions::default().token(TOKEN).ca_file(&other.ca)).await {
        Err(Error::Tls(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // Without a CA, tls:// is refused up front.
    let mut opts = ConnectOptions::default().token(TOKEN);
    opts.ca_file = None;
    match remote(&addr, opts).await {
        Err(Error::Tls(m)) => assert!(m.contains("needs the CA"), "{m}"),
        other => panic!("expected a TLS error naming the missing CA, got {other:?}"),
    }
    // Plain TCP to a TLS port does not get in either.
    let plain: Address = format!("tcp://127.0.0.1:{port}").parse().unwrap();
    assert!(
        remote(&plain, ConnectOptions::default().token(TOKEN).reconnect(None))
            .await
            .is_err()
    );
    bus_tests::assert_serving(&bus).await;
}

#[tokio::test]
async fn tcp_users_with_their_own_tokens_get_their_own_rights() {
    use busd::{acl::Permissions, config::NetUser};
    let dir = tempfile::tempdir().unwrap();
    let token_file = |name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{name}-token\n")).unwrap();
        NetUser {
            name: name.into(),
            token_file: Some(path),
            cert_name: None,
        }
    };
    let users = vec![token_file("alice"), token_file("bob")];
    let patterns = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let bus = TestBus::with_config(|c| {
        c.tcp = Some("127.0.0.1:0".into());
        c.token = Some(TOKEN.into());
        c.users = users;
        c.permissions = vec![
            Permissions {
                user: Some("alice".into()),
                publish: patterns(&["{user}.>", "shared.>"]),
                subscribe: patterns(&["{user}.>", "shared.>"]),
                ..Default::default()
            },
            Permissions {
                user: Some("bob".into()),
                publish: patterns(&["{user}.>"]),
                subscribe: patterns(&["{user}.>", "shared.>"]),
                ..Default::default()
            },
            Permissions {
                default: true,
                subscribe: patterns(&["public.>"]),
                ..Default::default()
            },
        ];
    });
    let addr = bus.tcp_address();
    let as_user = |token: &str| ConnectOptions::default().token(token).name(token);
    let alice = remote(&addr, as_user("alice-token")).await.unwrap();
    let bob = remote(&addr, as_user("bob-token")).await.unwrap();
    let shared = remote(&addr, as_user(TOKEN)).await.unwrap();

    // Alice may publish to shared.>, Bob may read it but not write it.
    let mut at_bob = bob.subscribe("shared.>").await.unwrap();
    alice.publish("shared.news", "from alice").await.unwrap();
    let m = within("bob's delivery", at_bob.next()).await.unwrap();
    assert_eq!(m.payload(), b"from alice");
    let mut events = bob.events();
    bob.publish("shared.news", "from bob").await.unwrap();
    bob.flush().await.unwrap();
    loop {
        match within("bob's refusal", events.next()).await {
            Some(libbus::Event::Error { code, message }) => {
                assert_eq!(code, ErrorCode::PermissionDenied);
                assert!(message.contains("rule: user bob publish"), "{message}");
                break;
            }
            Some(_) => {}
            None => panic!("bob's events ended"),
        }
    }
    // {user} is each one's own subtree.
    assert!(alice.subscribe("alice.inbox").await.is_ok());
    match alice.subscribe("bob.>").await {
        Err(Error::Server { code, .. }) => assert_eq!(code, ErrorCode::PermissionDenied),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // Reply inboxes are per principal, network users included.
    let _alices = alice.subscribe("_INBOX.a1ice.>").await.unwrap();
    assert!(bob.subscribe("_INBOX.a1ice.>").await.is_err());
    // The shared token is `tcp`, with the default entry.
    assert!(shared.subscribe("public.x").await.is_ok());
    assert!(shared.subscribe("shared.>").await.is_err());
    assert!(matches!(
        remote(&addr, as_user("carol-token")).await,
        Err(Error::Server {
            code: ErrorCode::AuthenticationFailed,
            ..
        })
    ));

    // A user's token cannot open a bridge link, which would carry
    // messages past its rules.
    let bridge = ClientFrame::Hello(proto::Hello {
        version: proto::PROTOCOL_VERSION,
        name: "sneaky-node",
        role: proto::Role::Bridge,
        auth: Some("alice-token"),
    });
    assert_eq!(raw_error(&addr, &bridge).await, ErrorCode::PermissionDenied);
    let denials = bus_tests::denials(&bus.client("admin").await).await;
    let rules: Vec<(&str, &str)> = denials.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    assert!(rules.contains(&("user alice", "bridge link")), "{rules:?}");
    assert!(
        rules.contains(&("user bob", "user bob publish (no pattern allows it)")),
        "{rules:?}"
    );
}

#[tokio::test]
async fn a_tls_client_certificate_names_its_user() {
    use busd::{acl::Permissions, config::NetUser};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path(), "mtls");
    let stranger = TestPki::generate(dir.path(), "stranger");
    let bus = TestBus::with_config(|c| {
        c.tcp = Some("127.0.0.1:0".into());
        c.token = Some(TOKEN.into());
        c.tls_cert = Some(pki.cert.clone());
        c.tls_key = Some(pki.key.clone());
        c.tls_client_ca = Some(pki.ca.clone());
        c.users = vec![NetUser {
            name: "carol".into(),
            token_file: None,
            cert_name: Some(bus_tests::CLIENT_NAME.into()),
        }];
        c.permissions = vec![
            Permissions {
                user: Some("carol".into()),
                publish: vec!["{user}.>".into()],
                subscribe: vec!["{user}.>".into()],
                ..Default::default()
            },
            Permissions {
                default: true,
                subscribe: vec!["public.>".into()],
                ..Default::default()
            },
        ];
    });
    let addr = bus.tcp_address();
    let local = bus.client("local").await;
    let mut seen = local.subscribe("carol.>").await.unwrap();

    // The certificate alone identifies carol: no token.
    let carol = remote(
        &addr,
        ConnectOptions {
            token: None,
            ..ConnectOptions::default()
        }
        .name("carol")
        .ca_file(&pki.ca)
        .client_cert(&pki.client_cert, &pki.client_key),
    )
    .await
    .unwrap();
    carol.publish("carol.hello", "signed").await.unwrap();
    let m = within("carol's message", seen.next()).await.unwrap();
    assert_eq!(m.payload(), b"signed");
    assert!(
        carol.subscribe("public.x").await.is_err(),
        "carol has her own rights, not the default"
    );

    // Without a certificate, the shared token still works, as `tcp`.
    let shared = remote(&addr, ConnectOptions::default().token(TOKEN).ca_file(&pki.ca))
        .await
        .unwrap();
    assert!(shared.subscribe("public.x").await.is_ok());
    assert!(shared.subscribe("carol.>").await.is_err());

    // A certificate from another CA fails the TLS handshake.
    let other = remote(
        &addr,
        ConnectOptions {
            token: None,
            ..ConnectOptions::default()
        }
        .ca_file(&pki.ca)
        .client_cert(&stranger.client_cert, &stranger.client_key),
    )
    .await;
    assert!(other.is_err(), "a certificate from an unknown CA was accepted");
}
