//! A blocking control client over TCP (the QUIC client, over a stream of a quinn connection,
//! is `sketchreduce_quic::control_call`; both drive a [`ClientSession`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use sketchreduce_wire::control::{encode_frame, frame_len, FrameError, Info, Request, Response};
use sketchreduce_wire::{Counters, ErrorKind, JobSpec};
use thiserror::Error;

use crate::auth::Secret;
use crate::session::{ClientSession, SessionError};

/// Errors of a control call.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Socket error (connect, read, write, timeout).
    #[error("control connection to {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A frame of a bad length.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Protocol or authentication failure.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The switch refused the request.
    #[error("switch refused the request ({kind}): {message}")]
    Refused {
        /// Why.
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
    /// An answer of the wrong type for the request.
    #[error("unexpected answer: {0:?}")]
    Unexpected(Box<Response>),
}

impl ClientError {
    /// The switch's error kind, if the switch refused the request.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Refused { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Reads one frame body (blocking, with the stream's timeouts).
pub fn read_frame<R: Read>(r: &mut R) -> std::io::Result<Result<Vec<u8>, FrameError>> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)?;
    let n = match frame_len(prefix) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok(Ok(body))
}

/// Writes one frame.
pub fn write_frame<W: Write>(w: &mut W, json: &str) -> Result<std::io::Result<()>, FrameError> {
    let mut out = Vec::with_capacity(4 + json.len());
    encode_frame(json, &mut out)?;
    Ok(w.write_all(&out).and_then(|()| w.flush()))
}

/// A connection to a control endpoint (several requests may share it).
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    session: ClientSession,
    addr: SocketAddr,
}

impl Client {
    /// Connects, reads the hello and checks it against `secret` (a server that authenticates
    /// needs one; a client with one refuses a server that does not). Every read and write is
    /// bounded by `timeout`.
    pub fn connect(
        addr: SocketAddr,
        secret: Option<Arc<Secret>>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let _ = stream.set_nodelay(true);
        let hello = read_frame(&mut stream).map_err(io)??;
        let session = ClientSession::from_hello(&hello, secret)?;
        Ok(Client {
            stream,
            session,
            addr,
        })
    }

    /// Sends one request and returns the (authenticated) response, errors included.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let io = |source| ClientError::Io {
            addr: self.addr.to_string(),
            source,
        };
        let frame = self.session.request(req);
        write_frame(&mut self.stream, &frame)?.map_err(io)?;
        let body = read_frame(&mut self.stream).map_err(io)??;
        Ok(self.session.response(&body)?)
    }

    /// Sends one request; a refusal becomes [`ClientError::Refused`].
    pub fn call_ok(&mut self, req: &Request) -> Result<Response, ClientError> {
        match self.call(req)? {
            Response::Error { kind, message } => Err(ClientError::Refused { kind, message }),
            r => Ok(r),
        }
    }

    /// `info`.
    pub fn info(&mut self) -> Result<Info, ClientError> {
        match self.call_ok(&Request::Info {})? {
            Response::Info(i) => Ok(i),
            r => Err(ClientError::Unexpected(Box::new(r))),
        }
    }

    /// `create`: returns the new epoch.
    pub fn create(
        &mut self,
        spec: &JobSpec,
        replace: bool,
        lease_ms: u64,
    ) -> Result<u32, ClientError> {
        let req = Request::Create {
            spec: spec.clone(),
            replace,
            lease_ms,
        };
        match self.call_ok(&req)? {
            Response::Created { epoch } => Ok(epoch),
            r => Err(ClientError::Unexpected(Box::new(r))),
        }
    }

    /// `join`: the registered spec with its epoch.
    pub fn join(&mut self, job: u16) -> Result<JobSpec, ClientError> {
        match self.call_ok(&Request::Join { job })? {
            Response::Joined(s) => Ok(s),
            r => Err(ClientError::Unexpected(Box::new(r))),
        }
    }

    /// `unregister`.
    pub fn unregister(&mut self, job: u16, epoch: u32) -> Result<(), ClientError> {
        match self.call_ok(&Request::Unregister { job, epoch })? {
            Response::Done => Ok(()),
            r => Err(ClientError::Unexpected(Box::new(r))),
        }
    }

    /// `counters`.
    pub fn counters(&mut self) -> Result<Counters, ClientError> {
        match self.call_ok(&Request::Counters {})? {
            Response::Counters(c) => Ok(c),
            r => Err(ClientError::Unexpected(Box::new(r))),
        }
    }
}

/// One request over a fresh connection.
pub fn call(
    addr: SocketAddr,
    secret: Option<Arc<Secret>>,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    Client::connect(addr, secret, timeout)?.call(req)
}
