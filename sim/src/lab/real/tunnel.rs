//! A loopback port that leads into the lab's network: every connection
//! accepted on 127.0.0.1 here is carried to an address on the lab network
//! from inside a namespace (the test process's own host on the switch). So
//! tests, kubectl and an operator's shell reach the cluster and the
//! coordinator without the machine's own network learning a route to the
//! lab's, and a cut in the lab cuts these connections too.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

use crate::netns::NetHost;

/// A running tunnel; it ends with the runtime it was started on.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// Where to connect: 127.0.0.1:<port>.
    pub local: SocketAddr,
    /// Where it leads.
    pub remote: SocketAddr,
}

impl Tunnel {
    /// Listens on 127.0.0.1 (`port`, 0 for any) and carries each connection
    /// from `from` to `remote`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        from: NetHost,
        remote: SocketAddr,
        port: u16,
    ) -> anyhow::Result<Tunnel> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let _guard = runtime.enter();
        let listener = TcpListener::from_std(listener)?;
        runtime.spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let from = from.clone();
                tokio::spawn(async move {
                    // Sockets keep the namespace they were made in: connect
                    // from a thread inside it, then use it from anywhere.
                    let outbound = tokio::task::spawn_blocking(move || from.connect(remote)).await;
                    let Ok(Ok(outbound)) = outbound else {
                        return;
                    };
                    if outbound.set_nonblocking(true).is_err() {
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::from_std(outbound) else {
                        return;
                    };
                    let mut inbound = inbound;
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Ok(Tunnel { local, remote })
    }
}
