//! `cargo xtask listen`: a listening socket on demand, held until Ctrl-C, and the kinds of
//! `listen()` call the lessons' pages discuss (a socket never bound, a port in use, a connected
//! socket, MPTCP, a second `listen()`), so that a learner can make each one.

use std::net::IpAddr;

use anyhow::Context as _;
use support::trigger;

#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// The TCP port (0 lets the kernel pick a free one)
    port: u16,
    /// The backlog passed to listen(); `nc -l` uses 1. Any int: the kernel reads it as unsigned
    /// and caps it at net.core.somaxconn, so -5 asks for the maximum
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    backlog: i32,
    /// The address to bind: IPv4 or IPv6 (0.0.0.0 and :: mean every address)
    #[arg(long, default_value = "0.0.0.0", value_parser = trigger::parse_ip)]
    addr: IpAddr,
    /// Listen inside a new network namespace (needs root), as a container would
    #[arg(long)]
    pub netns: bool,
    /// Call listen() on a socket never bound (PORT must be 0): the kernel picks its port during
    /// listen(), which lessons 3 and 4 see as port 0 and lesson 5 as the final port
    #[arg(long, conflicts_with = "addr", group = "kind")]
    unbound: bool,
    /// An MPTCP socket (IPPROTO_MPTCP) instead of a TCP one
    #[arg(long, group = "kind")]
    mptcp: bool,
    /// Also make a listen() that fails with EADDRINUSE: a second socket bound to the same port
    /// (SO_REUSEADDR on both), whose listen(BACKLOG + 1) fails once the first listens
    #[arg(long, group = "kind")]
    in_use: bool,
    /// Also make a listen() that fails with EINVAL: a client connected to the listener calls
    /// listen(BACKLOG + 1)
    #[arg(long, group = "kind")]
    connected: bool,
    /// Then call listen() a second time on the listening socket, with this backlog: it only
    /// changes the backlog, and no socket changes state
    #[arg(long, value_name = "BACKLOG", allow_negative_numbers = true)]
    relisten: Option<i32>,
}

pub fn run(args: &ListenArgs) -> anyhow::Result<()> {
    let netns = if args.netns {
        trigger::enter_new_netns()?
    } else {
        trigger::netns_inode()?
    };
    let addr = (args.addr, args.port).into();
    let mut also = Vec::new();
    // Held until the process ends: closing them would end the listens.
    let mut held = Vec::new();
    let listener = if args.unbound {
        if args.port != 0 {
            anyhow::bail!("--unbound listens on a port the kernel picks: give port 0");
        }
        trigger::listen_without_bind(trigger::Domain::IPV4, args.backlog)?
    } else if args.mptcp {
        trigger::listen_mptcp(addr, args.backlog)?
    } else if args.in_use {
        let (listener, second, error) = trigger::listen_on_a_port_in_use(addr, args.backlog)?;
        also.push(format!(
            "a second socket on port {}: listen({}) failed: {error}",
            listener.local_addr.port(),
            args.backlog + 1
        ));
        held.push(second);
        listener
    } else if args.connected {
        let (listener, client, error) = trigger::listen_on_a_connected_socket(addr, args.backlog)?;
        also.push(format!(
            "a client connected to it: listen({}) failed: {error}",
            args.backlog + 1
        ));
        held.push(client);
        listener
    } else {
        trigger::listen(addr, args.backlog)?
    };
    if let Some(backlog) = args.relisten {
        listener
            .socket
            .listen(backlog)
            .with_context(|| format!("the second listen({backlog}) failed"))?;
        also.push(format!(
            "listen({backlog}) again on it: the backlog is now {backlog}"
        ));
    }
    println!(
        "listening on {} with backlog {} ({}pid {}, network namespace net:[{netns}]{}); Ctrl-C to stop",
        listener.local_addr,
        args.backlog,
        if args.mptcp { "MPTCP, " } else { "" },
        std::process::id(),
        if args.netns { ", new" } else { "" },
    );
    for line in also {
        println!("  {line}");
    }
    // Hold the sockets; Ctrl-C ends the process, and the kernel closes them.
    loop {
        std::thread::park();
    }
}
