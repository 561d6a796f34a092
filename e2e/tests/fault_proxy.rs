//! A TCP fault proxy to put between one client (an agent, an operator) and the API
//! server, so that one process loses the API server while everything else, other tests
//! included, keeps it. It forwards bytes untouched, so TLS goes through: the API server's
//! certificate names 127.0.0.1, the proxy's address too.
//!
//! [`FaultProxy::cut`] drops every open connection and refuses new ones (the listening
//! socket is closed: what clients see of a stopped API server);
//! [`FaultProxy::blackhole`] drops every open connection and accepts new ones but
//! forwards nothing until [`FaultProxy::restore`] (what clients see of a network
//! partition: connections hang, then go through once it heals).
//!
//! The proxy runs on a runtime of its own, so it keeps working while a test blocks its
//! own threads (the SMTP client does).

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    runtime::Runtime,
    sync::watch,
};

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forwards them.
    Open,
    /// Refuses new ones (nothing listens).
    Refused,
    /// Accepts new ones and holds them, unread, until the link opens again.
    Blackholed,
}

pub struct FaultProxy {
    pub address: SocketAddr,
    link: watch::Sender<Link>,
    accepted: Arc<AtomicUsize>,
    runtime: Option<Runtime>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("the fault proxy's runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (link, state) = watch::channel(Link::Open);
        let accepted = Arc::new(AtomicUsize::new(0));
        runtime.spawn(serve(listener, upstream, state, accepted.clone()));
        Self {
            address,
            link,
            accepted,
            runtime: Some(runtime),
        }
    }

    /// A proxy to the API server a kubeconfig names (its first cluster).
    pub fn to_api_server(kubeconfig: &Path) -> Self {
        Self::start(api_server_address(kubeconfig))
    }

    /// The proxy's address as an API server URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.link.send_replace(Link::Refused);
    }

    /// Drops every open connection and holds new ones, forwarding nothing.
    pub fn blackhole(&self) {
        self.link.send_replace(Link::Blackholed);
    }

    /// Forwards again: held connections go through, new ones are accepted.
    pub fn restore(&self) {
        self.link.send_replace(Link::Open);
    }

    /// Connections accepted so far (refused ones are not).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The `host:port` of the first cluster's server in a kubeconfig (an `https://IP:PORT`
/// URL in the e2e world).
pub fn api_server_address(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a cluster server");
    let authority = server
        .strip_prefix("https://")
        .unwrap_or(server)
        .trim_end_matches('/');
    authority
        .parse()
        .unwrap_or_else(|e| panic!("server {server}: not IP:PORT ({e})"))
}

async fn serve(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    mut link: watch::Receiver<Link>,
    accepted: Arc<AtomicUsize>,
) {
    let address = listener.local_addr().unwrap();
    let mut listener = Some(TcpListener::from_std(listener).expect("a tokio listener"));
    loop {
        let state = *link.borrow_and_update();
        match (state, listener.is_some()) {
            // Closing the listening socket refuses new connections and resets those
            // waiting in its backlog.
            (Link::Refused, true) => listener = None,
            (Link::Open | Link::Blackholed, false) => listener = Some(rebind(address).await),
            _ => {}
        }
        match &listener {
            None => {
                if link.changed().await.is_err() {
                    return;
                }
            }
            Some(bound) => tokio::select! {
                changed = link.changed() => if changed.is_err() {
                    return;
                },
                connection = bound.accept() => if let Ok((client, _)) = connection {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(forward(client, upstream, link.clone()));
                },
            },
        }
    }
}

/// Listens on `address` again (it was ours a moment ago).
async fn rebind(address: SocketAddr) -> TcpListener {
    loop {
        let bound = TcpSocket::new_v4().and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(1024)
        });
        match bound {
            Ok(listener) => return listener,
            Err(error) => {
                eprintln!("fault proxy: cannot listen on {address} again: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Forwards one connection while the link is open; drops it as soon as it is not.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    // Accepted during a blackhole: wait, unread, for the link to open (or be cut).
    loop {
        let state = *link.borrow_and_update();
        match state {
            Link::Open => break,
            Link::Refused => return,
            Link::Blackholed => {
                if link.changed().await.is_err() {
                    return;
                }
            }
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = link.wait_for(|state| *state != Link::Open) => {}
    }
}
