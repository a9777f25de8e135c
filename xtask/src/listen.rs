//! `cargo xtask listen`: a listening socket on demand, held until Ctrl-C.

use std::net::IpAddr;

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
    #[arg(long, conflicts_with = "addr")]
    unbound: bool,
}

pub fn run(args: &ListenArgs) -> anyhow::Result<()> {
    let netns = if args.netns {
        trigger::enter_new_netns()?
    } else {
        trigger::netns_inode()?
    };
    let listener = if args.unbound {
        if args.port != 0 {
            anyhow::bail!("--unbound listens on a port the kernel picks: give port 0");
        }
        trigger::listen_without_bind(trigger::Domain::IPV4, args.backlog)?
    } else {
        trigger::listen((args.addr, args.port).into(), args.backlog)?
    };
    println!(
        "listening on {} with backlog {} (pid {}, network namespace net:[{netns}]{}); Ctrl-C to stop",
        listener.local_addr,
        args.backlog,
        std::process::id(),
        if args.netns { ", new" } else { "" },
    );
    // Hold the socket; Ctrl-C ends the process, and the kernel closes it.
    loop {
        std::thread::park();
    }
}
