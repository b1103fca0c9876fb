//! Sans-I/O control sessions: one [`ServerSession`] per server-side connection, one
//! [`ClientSession`] per client-side connection. They turn frame bodies into frame bodies
//! (hello, envelopes, MACs, sequence numbers); the TCP and QUIC layers move the bytes.

use std::sync::Arc;

use sketchreduce_wire::control::{
    ClientHello, Envelope, Hello, Request, Response, PROTOCOL, REQUEST_CONTEXT, RESPONSE_CONTEXT,
};
use sketchreduce_wire::ErrorKind;
use thiserror::Error;

use crate::auth::{is_nonce, new_nonce, Secret};

/// One response frame body to send, and whether to close the connection after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// JSON text of the response [`Envelope`].
    pub frame: String,
    /// Close the connection once the frame is sent (bad request envelope, bad MAC or seq).
    pub close: bool,
}

/// The server side of one control connection.
#[derive(Debug)]
pub struct ServerSession {
    secret: Option<Arc<Secret>>,
    nonce: String,
    next_seq: u64,
}

impl ServerSession {
    /// A session with a fresh random nonce; `secret` `None` means auth off.
    pub fn new(secret: Option<Arc<Secret>>) -> Self {
        Self::with_nonce(secret, new_nonce())
    }

    /// A session with a given nonce (tests and documentation examples only: a nonce must be
    /// fresh per connection).
    pub fn with_nonce(secret: Option<Arc<Secret>>, nonce: String) -> Self {
        ServerSession {
            secret,
            nonce,
            next_seq: 1,
        }
    }

    /// The hello frame body the server sends first.
    pub fn hello(&self) -> String {
        let h = Hello {
            hello: PROTOCOL.to_string(),
            nonce: self.nonce.clone(),
            auth: self.secret.is_some(),
        };
        serde_json::to_string(&h).unwrap_or_default()
    }

    /// Handles one request frame body: checks the envelope, its sequence number and MAC,
    /// parses the request and answers it with `dispatch`. Never fails: every problem becomes
    /// an error response (and `close` for problems that end the connection).
    pub fn handle(&mut self, frame: &[u8], dispatch: impl FnOnce(Request) -> Response) -> Reply {
        let env: Envelope = match std::str::from_utf8(frame)
            .ok()
            .and_then(|t| serde_json::from_str(t).ok())
        {
            Some(e) => e,
            None => {
                return self.reply(
                    0,
                    Response::error(
                        ErrorKind::BadRequest,
                        "frame is not a request envelope {\"seq\",\"body\",\"mac\"}",
                    ),
                    true,
                )
            }
        };
        if env.seq != self.next_seq {
            let msg = format!("sequence number {} (expected {})", env.seq, self.next_seq);
            return self.reply(env.seq, Response::error(ErrorKind::Unauthorized, msg), true);
        }
        if let Some(s) = &self.secret {
            if !s.verify(REQUEST_CONTEXT, &self.nonce, env.seq, &env.body, &env.mac) {
                return self.reply(
                    env.seq,
                    Response::error(ErrorKind::Unauthorized, "bad request MAC"),
                    true,
                );
            }
        }
        self.next_seq += 1;
        let resp = match serde_json::from_str::<Request>(&env.body) {
            Ok(req) => dispatch(req),
            Err(e) => Response::error(ErrorKind::BadRequest, format!("bad request body: {e}")),
        };
        self.reply(env.seq, resp, false)
    }

    fn reply(&self, seq: u64, resp: Response, close: bool) -> Reply {
        let body = resp.to_json();
        let mac = match &self.secret {
            Some(s) => s.mac(RESPONSE_CONTEXT, &self.nonce, seq, &body),
            None => String::new(),
        };
        let env = Envelope { seq, body, mac };
        Reply {
            frame: serde_json::to_string(&env).unwrap_or_default(),
            close,
        }
    }
}

/// Client-side protocol errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// The server's first frame is not a v2 hello.
    #[error("not a sketchreduce control v2 endpoint: {0}")]
    Hello(String),
    /// The server requires authentication and this client has no secret.
    #[error(
        "the switch requires authentication: set SKETCHREDUCE_SECRET_FILE or SKETCHREDUCE_SECRET"
    )]
    NeedSecret,
    /// This client has a secret but the server does not authenticate: it could be anyone.
    #[error("a secret is configured but the switch does not authenticate (auth off): refusing to trust it")]
    ServerWithoutAuth,
    /// A response that is not a valid envelope or response body.
    #[error("bad response: {0}")]
    Response(String),
    /// A response with a bad MAC or the wrong sequence number.
    #[error("response failed authentication: {0}")]
    Unauthenticated(String),
}

/// The client side of one control connection.
#[derive(Debug)]
pub struct ClientSession {
    secret: Option<Arc<Secret>>,
    nonce: String,
    seq: u64,
}

impl ClientSession {
    /// The first frame a QUIC client sends ([`ClientHello`]).
    pub fn client_hello() -> String {
        serde_json::to_string(&ClientHello {
            hello: PROTOCOL.to_string(),
        })
        .unwrap_or_default()
    }

    /// Starts a session from the server's hello frame body.
    pub fn from_hello(frame: &[u8], secret: Option<Arc<Secret>>) -> Result<Self, SessionError> {
        let h: Hello = std::str::from_utf8(frame)
            .ok()
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| SessionError::Hello(preview(frame)))?;
        if h.hello != PROTOCOL || !is_nonce(&h.nonce) {
            return Err(SessionError::Hello(preview(frame)));
        }
        match (h.auth, secret.is_some()) {
            (true, false) => return Err(SessionError::NeedSecret),
            (false, true) => return Err(SessionError::ServerWithoutAuth),
            _ => {}
        }
        Ok(ClientSession {
            secret,
            nonce: h.nonce,
            seq: 0,
        })
    }

    /// The next request frame body (signed when a secret is set).
    pub fn request(&mut self, req: &Request) -> String {
        self.seq += 1;
        let body = serde_json::to_string(req).unwrap_or_default();
        let mac = match &self.secret {
            Some(s) => s.mac(REQUEST_CONTEXT, &self.nonce, self.seq, &body),
            None => String::new(),
        };
        serde_json::to_string(&Envelope {
            seq: self.seq,
            body,
            mac,
        })
        .unwrap_or_default()
    }

    /// Checks and parses the response frame body to the last request.
    pub fn response(&mut self, frame: &[u8]) -> Result<Response, SessionError> {
        let env: Envelope = std::str::from_utf8(frame)
            .ok()
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| SessionError::Response(preview(frame)))?;
        if let Some(s) = &self.secret {
            if !s.verify(RESPONSE_CONTEXT, &self.nonce, env.seq, &env.body, &env.mac) {
                return Err(SessionError::Unauthenticated("bad response MAC".into()));
            }
        }
        let resp =
            Response::from_json(&env.body).map_err(|e| SessionError::Response(e.to_string()))?;
        if env.seq != self.seq {
            // The server could not read our envelope (seq 0): report its error as such.
            if let (0, Response::Error { .. }) = (env.seq, &resp) {
                return Ok(resp);
            }
            return Err(SessionError::Unauthenticated(format!(
                "response for request {} while waiting for {}",
                env.seq, self.seq
            )));
        }
        Ok(resp)
    }
}

fn preview(frame: &[u8]) -> String {
    let t = String::from_utf8_lossy(&frame[..frame.len().min(120)]).into_owned();
    format!("{t:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Option<Arc<Secret>> {
        Some(Arc::new(
            Secret::new(b"sketchreduce-test-secret".to_vec()).unwrap(),
        ))
    }

    fn info(_: Request) -> Response {
        Response::Done
    }

    #[test]
    fn authenticated_exchange() {
        let mut srv = ServerSession::new(secret());
        let mut cli = ClientSession::from_hello(srv.hello().as_bytes(), secret()).unwrap();
        for _ in 0..3 {
            let f = cli.request(&Request::Info {});
            let r = srv.handle(f.as_bytes(), |req| {
                assert_eq!(req, Request::Info {});
                Response::Created { epoch: 5 }
            });
            assert!(!r.close);
            assert_eq!(
                cli.response(r.frame.as_bytes()).unwrap(),
                Response::Created { epoch: 5 }
            );
        }
    }

    #[test]
    fn replay_and_forgery_are_refused() {
        let mut srv = ServerSession::new(secret());
        let mut cli = ClientSession::from_hello(srv.hello().as_bytes(), secret()).unwrap();
        let f1 = cli.request(&Request::Counters {});
        assert!(!srv.handle(f1.as_bytes(), info).close);
        // The same frame again (replay on the same connection): wrong seq.
        let r = srv.handle(f1.as_bytes(), |_| panic!("must not dispatch"));
        assert!(r.close);
        assert!(matches!(
            cli.response(r.frame.as_bytes()),
            Ok(Response::Error {
                kind: ErrorKind::Unauthorized,
                ..
            })
        ));
        // The same frame on another connection: other nonce, bad MAC.
        let mut srv2 = ServerSession::new(secret());
        let r = srv2.handle(f1.as_bytes(), |_| panic!("must not dispatch"));
        assert!(r.close);
        assert!(r.frame.contains("unauthorized"), "{}", r.frame);
        // No secret on the client: empty MAC.
        let mut srv3 = ServerSession::new(secret());
        let nonce_hello = srv3.hello();
        assert_eq!(
            ClientSession::from_hello(nonce_hello.as_bytes(), None).unwrap_err(),
            SessionError::NeedSecret
        );
        let forged = r#"{"seq":1,"body":"{\"op\":\"counters\"}","mac":""}"#;
        let r = srv3.handle(forged.as_bytes(), |_| panic!("must not dispatch"));
        assert!(r.close && r.frame.contains("unauthorized"));
    }

    #[test]
    fn auth_off_still_checks_seq_and_shape() {
        let mut srv = ServerSession::new(None);
        assert!(srv.hello().contains(r#""auth":false"#));
        assert_eq!(
            ClientSession::from_hello(srv.hello().as_bytes(), secret()).unwrap_err(),
            SessionError::ServerWithoutAuth
        );
        let mut cli = ClientSession::from_hello(srv.hello().as_bytes(), None).unwrap();
        let f = cli.request(&Request::Info {});
        let r = srv.handle(f.as_bytes(), info);
        assert_eq!(cli.response(r.frame.as_bytes()).unwrap(), Response::Done);
        // A valid envelope with a bad body: an error, the connection stays.
        let bad = r#"{"seq":2,"body":"{\"op\":\"nope\"}","mac":""}"#;
        let r = srv.handle(bad.as_bytes(), |_| panic!("must not dispatch"));
        assert!(!r.close);
        assert!(r.frame.contains("bad_request"));
        // Not an envelope at all (v1 bincode bytes): an error with seq 0, then close.
        let v1 = [0x01u8, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x0f];
        let r = srv.handle(&v1, |_| panic!("must not dispatch"));
        assert!(r.close);
        assert!(r.frame.starts_with(r#"{"seq":0,"#), "{}", r.frame);
    }

    /// The example exchange of docs/wire.md ("Control protocol", example), byte for byte; the
    /// MACs were computed independently with Python's `hmac` module.
    #[test]
    fn docs_example_exchange() {
        use sketchreduce_wire::control::Info;
        use sketchreduce_wire::{JobSpec, WorkerSpec};
        let nonce = "00112233445566778899aabbccddeeff".to_string();
        let mut srv = ServerSession::with_nonce(secret(), nonce);
        let hello = srv.hello();
        assert_eq!(
            hello,
            r#"{"hello":"sketchreduce-control/2","nonce":"00112233445566778899aabbccddeeff","auth":true}"#
        );
        assert_eq!(hello.len(), 0x59);
        let mut cli = ClientSession::from_hello(hello.as_bytes(), secret()).unwrap();
        let req = cli.request(&Request::Info {});
        assert_eq!(
            req,
            r#"{"seq":1,"body":"{\"op\":\"info\"}","mac":"4e4779ac6f15c3147add611a4ef5ebd547c65536f3e75e29397760b10594fe62"}"#
        );
        assert_eq!(req.len(), 0x6d);
        let info = Info {
            version: 2,
            data_port: 39424,
            data_ports: 16,
            slots: 4096,
            max_lanes: 2048,
            max_workers: 32,
            max_jobs: 64,
            auth: true,
        };
        let r = srv.handle(req.as_bytes(), |_| Response::Info(info));
        assert_eq!(
            r.frame,
            r#"{"seq":1,"body":"{\"ok\":true,\"info\":{\"version\":2,\"data_port\":39424,\"data_ports\":16,\"slots\":4096,\"max_lanes\":2048,\"max_workers\":32,\"max_jobs\":64,\"auth\":true}}","mac":"f8459d69dd9b766ba880cd2be4aaaf50c208585b3a1a30bf741000e30ef764be"}"#
        );
        assert_eq!(r.frame.len(), 0xfb);
        assert_eq!(
            cli.response(r.frame.as_bytes()).unwrap(),
            Response::Info(info)
        );
        let spec = JobSpec {
            id: 1,
            epoch: 0,
            lanes: 64,
            slot_base: 0,
            slot_count: 128,
            workers: vec![
                WorkerSpec::at("10.0.0.1:40000".parse().unwrap()),
                WorkerSpec::at("10.0.0.2:40000".parse().unwrap()),
            ],
        };
        let req = cli.request(&Request::Create {
            spec,
            replace: false,
            lease_ms: 60_000,
        });
        assert_eq!(
            req,
            r#"{"seq":2,"body":"{\"op\":\"create\",\"spec\":{\"id\":1,\"epoch\":0,\"lanes\":64,\"slot_base\":0,\"slot_count\":128,\"workers\":[{\"addr\":\"10.0.0.1:40000\"},{\"addr\":\"10.0.0.2:40000\"}]},\"replace\":false,\"lease_ms\":60000}","mac":"17e3e88b02a9c1b5937f05b1450d55161d867617e6b134d624a4e4e730540bab"}"#
        );
        let r = srv.handle(req.as_bytes(), |_| Response::Created { epoch: 305_419_896 });
        assert_eq!(
            r.frame,
            r#"{"seq":2,"body":"{\"ok\":true,\"epoch\":305419896}","mac":"d950caeaa088dfe7887954dcea5bd4518f8df175c27e444a5ad845ea70fbd06f"}"#
        );
    }

    #[test]
    fn bad_hellos() {
        for h in [
            &b"{}"[..],
            br#"{"hello":"sketchreduce-control/1","nonce":"00112233445566778899aabbccddeeff","auth":false}"#,
            br#"{"hello":"sketchreduce-control/2","nonce":"0011","auth":false}"#,
            b"\xff\xfe",
        ] {
            assert!(matches!(
                ClientSession::from_hello(h, None),
                Err(SessionError::Hello(_))
            ));
        }
    }
}
