//! Edge policies applied before routing: connection-level limits (header deadline, header
//! size, idle keep-alive), request hygiene, forwarding headers and the client address.
//! Also CORS, IP rules and header rules per route.
//!
//! Layer: the edge policies sit above `config` and `errors`; must not import `state`, `cache`,
//! `upstream`, `metrics`, `auth`, `pages`, `plan` or `proxy`. The listener (`edge::listener`) is
//! the top layer and has its own line.

pub mod brotli_body;
pub mod client;
pub mod coding;
pub mod cors;
pub mod forwarding;
pub mod header_rules;
pub mod hygiene;
pub mod in_flight;
pub mod ip_rules;
pub mod listener;
pub mod ratelimit;
pub mod tls;
pub mod write_buffer;
