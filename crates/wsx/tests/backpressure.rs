//! A peer that stops reading makes `send().await` wait, and the memory queued for it
//! stays bounded by the write buffer.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use wsx::{ClientConfig, Error, IoConfig, Message, ServerConfig};

#[tokio::test]
async fn send_waits_for_a_peer_that_stops_reading() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limit = 256 * 1024;
    let mut io = IoConfig::default();
    io.write_buffer_size = limit;
    let server_cfg = ServerConfig::default().io(io);
    let (accepted, connected) = tokio::join!(
        async {
            wsx::accept(listener.accept().await.unwrap().0, &server_cfg)
                .await
                .unwrap()
        },
        async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            wsx::client_handshake(tcp, "x", "/", &ClientConfig::default())
                .await
                .unwrap()
        }
    );
    let (mut server, _) = accepted;
    let (client, _) = connected;
    // The client does not read. Fill the socket buffers and the write buffer.
    let msg = Message::Binary(Bytes::from(vec![7u8; 64 * 1024]));
    let mut sent = 0usize;
    loop {
        match server.try_send(msg.clone()) {
            Ok(()) => sent += 1,
            Err(Error::Full(_)) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 100_000, "the write buffer never filled");
    }
    let queued = server.buffered_amount();
    assert!(queued >= limit - 64 * 1024, "queued {queued}");
    assert!(
        queued <= limit + 64 * 1024 + 16,
        "memory bounded by the limit: {queued}"
    );
    // A send now cannot complete: it waits instead of growing memory.
    let mut pending = Box::pin(server.send(msg.clone()));
    assert!(
        pending.as_mut().now_or_never().is_none(),
        "send() waits while the peer does not read"
    );
    // Once the client reads, everything goes through.
    let expected = sent + 2;
    let reader = tokio::spawn(async move {
        let mut client = client;
        let mut got = 0;
        while got < expected {
            match client.next().await.unwrap().unwrap() {
                Message::Binary(b) => assert_eq!(b.len(), 64 * 1024),
                other => panic!("{other:?}"),
            }
            got += 1;
        }
        got
    });
    pending.as_mut().await.unwrap();
    drop(pending);
    server.send(msg.clone()).await.unwrap();
    assert_eq!(reader.await.unwrap(), expected);
    assert_eq!(server.buffered_amount(), 0);
}
