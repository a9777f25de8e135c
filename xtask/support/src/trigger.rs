//! Listening sockets on demand: `cargo xtask listen` for the lessons, and the tests' own `listen()`
//! calls (in a network namespace or a process of their own), so that nothing depends on `nc`.

use std::{
    fs, io,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    sync::mpsc,
    thread,
};

use anyhow::Context as _;
pub use socket2::{self, Domain};
use socket2::{Protocol, SockAddr, Socket, Type};

/// A TCP socket in the listening state; closing it (dropping) ends the listen.
#[derive(Debug)]
pub struct Listener {
    pub socket: Socket,
    /// The address and port the kernel really bound (port 0 asks for any free port).
    pub local_addr: SocketAddr,
}

/// `socket()`, `bind(addr)` and `listen(backlog)`, with the causes a learner meets spelled out.
pub fn listen(addr: SocketAddr, backlog: i32) -> anyhow::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .context("cannot create a TCP socket")?;
    bind_and_listen(socket, addr, backlog)
}

/// The same for an MPTCP socket (`IPPROTO_MPTCP`); an error where the kernel has no MPTCP.
pub fn listen_mptcp(addr: SocketAddr, backlog: i32) -> anyhow::Result<Listener> {
    let mptcp = Protocol::from(i32::from(common::IPPROTO_MPTCP));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(mptcp))
        .context("cannot create an MPTCP socket")?;
    bind_and_listen(socket, addr, backlog)
}

fn bind_and_listen(socket: Socket, addr: SocketAddr, backlog: i32) -> anyhow::Result<Listener> {
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|error| bind_error(addr, error))?;
    socket
        .listen(backlog)
        .with_context(|| format!("listen({addr}, backlog {backlog}) failed"))?;
    listening(socket)
}

/// `socket()` and `listen(backlog)` without `bind()`: the kernel picks the port (and the wildcard
/// address of the family) itself, during `listen()`.
pub fn listen_without_bind(domain: Domain, backlog: i32) -> anyhow::Result<Listener> {
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .context("cannot create a TCP socket")?;
    socket
        .listen(backlog)
        .with_context(|| format!("listen(backlog {backlog}) without bind failed"))?;
    listening(socket)
}

/// A `listen()` that fails with `EADDRINUSE`: two TCP sockets bound to one port of `addr` with
/// `SO_REUSEADDR` (which lets them share it until one listens), the first listens with `backlog`,
/// then the second's `listen(backlog + 1)` fails. Returns the listener, the second socket (kept
/// open as the caller likes) and its error.
pub fn listen_on_a_port_in_use(
    addr: SocketAddr,
    backlog: i32,
) -> anyhow::Result<(Listener, Socket, io::Error)> {
    let bound = |addr: SocketAddr| -> anyhow::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .context("cannot create a TCP socket")?;
        socket.set_reuse_address(true)?;
        socket
            .bind(&SockAddr::from(addr))
            .map_err(|error| bind_error(addr, error))?;
        Ok(socket)
    };
    let first = bound(addr)?;
    let port = first
        .local_addr()?
        .as_socket()
        .context("no IP address")?
        .port();
    let second = bound(SocketAddr::new(addr.ip(), port))?;
    first
        .listen(backlog)
        .with_context(|| format!("listen(backlog {backlog}) on port {port} failed"))?;
    let error = second
        .listen(backlog + 1)
        .err()
        .context("the second listen() on a port in use worked: EADDRINUSE was expected")?;
    Ok((listening(first)?, second, error))
}

/// A `listen()` that fails with `EINVAL`: a listener on `addr`, a client connected to it, then
/// `listen(backlog)` on the connected client. Returns the listener, the client and its error.
pub fn listen_on_a_connected_socket(
    addr: SocketAddr,
    backlog: i32,
) -> anyhow::Result<(Listener, Socket, io::Error)> {
    let server = listen(addr, backlog)?;
    let client = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .context("cannot create a TCP socket")?;
    client
        .connect(&SockAddr::from(server.local_addr))
        .context("cannot connect to our own listener")?;
    let error = client
        .listen(backlog + 1)
        .err()
        .context("listen() on a connected socket worked: EINVAL was expected")?;
    Ok((server, client, error))
}

/// The listener of a socket that now listens, with the address the kernel bound.
fn listening(socket: Socket) -> anyhow::Result<Listener> {
    let local_addr = socket
        .local_addr()?
        .as_socket()
        .context("the socket has no IP address")?;
    Ok(Listener { socket, local_addr })
}

fn bind_error(addr: SocketAddr, error: io::Error) -> anyhow::Error {
    let cause = match error.kind() {
        io::ErrorKind::AddrInUse => format!(
            "port {} is already in use on {}: another program listens there; pick another port",
            addr.port(),
            addr.ip()
        ),
        io::ErrorKind::AddrNotAvailable => {
            format!(
                "{} is not an address of this machine (or of this network namespace)",
                addr.ip()
            )
        }
        io::ErrorKind::PermissionDenied => {
            format!(
                "ports below 1024 need root or CAP_NET_BIND_SERVICE (port {})",
                addr.port()
            )
        }
        _ => "the kernel refused the bind".into(),
    };
    anyhow::Error::new(error).context(format!("cannot bind {addr}: {cause}"))
}

/// The inode number of the calling thread's network namespace: the number in `net:[N]` that
/// `ls -l /proc/PID/ns/net` shows, and what lesson 4 reads from the kernel.
pub fn netns_inode() -> io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Moves the calling thread into a new, empty network namespace whose loopback is up, and returns
/// the namespace's inode. Needs root (CAP_SYS_ADMIN).
pub fn enter_new_netns() -> anyhow::Result<u64> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("cannot create a network namespace (unshare(CLONE_NEWNET) needs root)")?;
    bring_loopback_up().context("cannot bring up `lo` in the new network namespace")?;
    Ok(netns_inode()?)
}

/// A new namespace's `lo` is down and has no address; bringing it up gives it 127.0.0.1 and ::1.
fn bring_loopback_up() -> io::Result<()> {
    // SIOCGIFFLAGS / SIOCSIFFLAGS on any socket of the namespace, as `ip link set lo up` does.
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: `ifreq` is plain data; the name is NUL-terminated within its 16 bytes.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = src as libc::c_char;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: both ioctls read and write only `request`, which outlives them.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Parses `--addr`: an IPv4 or IPv6 address, without a port.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| {
            format!("`{text}` is not an IP address (for example 127.0.0.1, 0.0.0.0, ::1 or ::)")
        })
}

/// A thread that lives in a network namespace of its own (with `lo` up) and runs the closures it is
/// given there, so that a test's listens can be told apart by their namespace.
pub struct InNewNetns {
    /// The namespace's inode, as `/proc/PID/ns/net` and lessons 4 and 5 show it.
    pub inode: u64,
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl InNewNetns {
    /// The thread's name, which is also its `comm` in the kernel's events.
    pub const THREAD_NAME: &str = "netns-listener";

    pub fn new() -> Self {
        let (jobs, queue) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (inode_sender, inode) = mpsc::channel();
        thread::Builder::new()
            .name(Self::THREAD_NAME.into())
            .spawn(move || {
                inode_sender.send(enter_new_netns().unwrap()).unwrap();
                for job in queue {
                    job();
                }
            })
            .unwrap();
        Self {
            inode: inode.recv().unwrap(),
            jobs,
        }
    }

    /// Runs `job` in the namespace's thread and returns its result.
    pub fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (result_sender, result) = mpsc::channel();
        self.jobs
            .send(Box::new(move || result_sender.send(job()).unwrap()))
            .unwrap();
        result.recv().unwrap()
    }
}

impl Default for InNewNetns {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes another process call `listen()` on `addr` with `backlog`, and returns its pid and the
/// address it listened on, once it has exited.
pub fn listen_in_another_process(
    addr: std::net::SocketAddr,
    backlog: i32,
) -> (u32, std::net::SocketAddr) {
    listen_in_another_process_after(addr, backlog, || {})
}

/// [`listen_in_another_process`], with `before` run in the other process before it listens (for
/// example to move itself into a cgroup). `before` runs after `fork()`: system calls only.
/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs` (writing 0 there moves
/// the writer). System calls only: it may run between `fork()` and `exec()` or a child's listen.
pub fn join_cgroup(procs: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain system calls on a NUL-terminated path and a one-byte buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, c"0".as_ptr().cast(), 1);
        libc::close(fd);
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn listen_in_another_process_after(
    addr: std::net::SocketAddr,
    backlog: i32,
    before: impl FnOnce(),
) -> (u32, std::net::SocketAddr) {
    use nix::unistd::{ForkResult, fork, pipe, read, write};
    let (reader, writer) = pipe().unwrap();
    // SAFETY: the child only makes system calls (socket, bind, listen, getsockname, write, _exit),
    // which are safe after fork() in a multi-threaded process.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            before();
            let port = listen(addr, backlog).map_or(0, |listener| listener.local_addr.port());
            let _ = write(&writer, &port.to_ne_bytes());
            // SAFETY: ends the child at once, without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(writer);
            let mut port = [0u8; 2];
            assert_eq!(
                read(&reader, &mut port).unwrap(),
                2,
                "the child could not listen"
            );
            nix::sys::wait::waitpid(child, None).unwrap();
            let port = u16::from_ne_bytes(port);
            assert_ne!(port, 0, "the child could not listen");
            (
                child.as_raw() as u32,
                std::net::SocketAddr::new(addr.ip(), port),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpStream};

    use super::*;

    #[test]
    fn listens_on_a_port_the_kernel_picks() {
        let listener = listen((Ipv4Addr::LOCALHOST, 0).into(), 7).unwrap();
        assert_eq!(listener.local_addr.ip(), Ipv4Addr::LOCALHOST);
        assert_ne!(listener.local_addr.port(), 0);
        TcpStream::connect(listener.local_addr)
            .expect("a real listening socket accepts connections");
    }

    #[test]
    fn without_bind_the_kernel_picks_a_port() {
        let listener = listen_without_bind(Domain::IPV4, 3).unwrap();
        assert_eq!(listener.local_addr.ip(), Ipv4Addr::UNSPECIFIED);
        assert_ne!(listener.local_addr.port(), 0);
    }

    #[test]
    fn a_negative_backlog_is_passed_on_as_listen_takes_any_int() {
        let listener = listen((Ipv4Addr::LOCALHOST, 0).into(), -5).unwrap();
        TcpStream::connect(listener.local_addr).expect("the kernel caps -5, it does not refuse it");
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let first = listen((Ipv4Addr::LOCALHOST, 0).into(), 1).unwrap();
        let error = listen(first.local_addr, 1).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains(&format!(
                "port {} is already in use",
                first.local_addr.port()
            )),
            "{message}"
        );
    }

    #[test]
    fn addresses_parse_with_or_without_brackets() {
        assert_eq!(parse_ip("127.0.0.1"), Ok(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(parse_ip("[::1]"), Ok("::1".parse().unwrap()));
        assert!(
            parse_ip("localhost:80")
                .unwrap_err()
                .contains("is not an IP address")
        );
    }
}
