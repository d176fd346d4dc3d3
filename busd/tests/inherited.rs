//! Sockets handed to busd as systemd hands them (`Server::bind_with`): a
//! listening TCP socket is served with the token and TLS settings as if
//! busd had bound `tcp` itself, and what systemd passed is sorted by kind,
//! with a clear error for a socket busd cannot serve.

use std::os::fd::OwnedFd;

use busd::{systemd::Inherited, Config, Server};
use tokio_util::sync::CancellationToken;

mod common;
use common::within;

#[test]
fn a_passed_tcp_socket_is_served_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let mut config = Config::with_socket(dir.path().join("busd.sock"));
        config.token = Some("inherited-token".into());
        let inherited = Inherited {
            unix: None,
            tcp: Some(OwnedFd::from(tcp)),
        };
        let server = Server::bind_with(config, inherited).unwrap();
        assert_eq!(
            server.tcp_address().unwrap().to_string(),
            format!("tcp://127.0.0.1:{port}")
        );
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(server.run(shutdown.clone()));

        let address = format!("tcp://127.0.0.1:{port}").parse().unwrap();
        let opts = libbus::ConnectOptions::default().token("inherited-token");
        let bus = within(
            "a connection on the passed socket",
            libbus::Bus::connect_with(&address, opts),
        )
        .await
        .unwrap();
        within("served", bus.flush()).await.unwrap();
        let wrong = libbus::ConnectOptions::default().token("wrong").reconnect(None);
        let refused = libbus::Bus::connect_with(&address, wrong).await;
        assert!(refused.is_err(), "the token is checked on a passed socket too");
        drop(bus);
        shutdown.cancel();
        within("shutdown", running).await.unwrap();
    });
}

#[test]
fn passed_sockets_are_sorted_by_kind_and_the_rest_refused() {
    let dir = tempfile::tempdir().unwrap();
    let unix = std::os::unix::net::UnixListener::bind(dir.path().join("a.sock")).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sorted = Inherited::sort(vec![
        (OwnedFd::from(tcp), "tcp".into()),
        (OwnedFd::from(unix), "busd.socket".into()),
    ])
    .unwrap();
    assert!(sorted.unix.is_some() && sorted.tcp.is_some());

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = Inherited::sort(vec![(OwnedFd::from(udp), "dgram".into())]).unwrap_err();
    assert!(err.to_string().contains("\"dgram\""), "{err}");

    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Inherited::sort(vec![
        (OwnedFd::from(a), "one".into()),
        (OwnedFd::from(b), "two".into()),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("two sockets of one kind"), "{err}");
}
