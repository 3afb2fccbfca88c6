//! The connection state machine: bytes and time in, events and bytes out.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::close::{encode_close_payload, parse_close_payload, CloseFrame};
use crate::config::Config;
use crate::deframer::Deframer;
use crate::error::{CapacityError, CapacityKind, Error, ProtocolError, TimeoutKind};
use crate::extensions::permessage_deflate::{DeflateCodec, DeflateConfig, DeflateParams};
use crate::fragmenter::{write_frame, OutBuffer, SharedFrame};
use crate::frame::{FrameHeader, OpCode, MAX_CONTROL_PAYLOAD};
use crate::message::{DataFrame, DataKind, Event, Message, Text};
use crate::utf8::Utf8Validator;

/// Which end of the connection this is. It decides masking (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Masks every frame it sends; rejects masked frames.
    Client,
    /// Never masks; rejects unmasked frames.
    Server,
}

/// Where the close handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's; incoming messages are still
    /// delivered, nothing more can be sent.
    Closing,
    /// Both close frames were exchanged, or the connection failed or timed out. Flush the
    /// output, then close the transport (a server closes TCP first, RFC 6455 §7.1.1).
    Closed,
}

/// One copy of the settings for the connections made with equal ones: the last
/// settings a connection was made with on this thread are kept and shared (a server
/// makes all of its connections with the same), so a connection holds a pointer
/// instead of its own 112 bytes.
fn shared_config(cfg: Config) -> Arc<Config> {
    thread_local! {
        static LAST: RefCell<Option<Arc<Config>>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some(shared) if **shared == cfg => shared.clone(),
            _ => {
                let shared = Arc::new(cfg);
                *last = Some(shared.clone());
                shared
            }
        }
    })
}

/// A message being reassembled.
#[derive(Debug)]
struct InMessage {
    kind: DataKind,
    body: Body,
}

/// What a message being reassembled has so far.
#[derive(Debug)]
enum Body {
    /// Its payload as received.
    Plain(BytesMut),
    /// Compressed (RSV1): its payload inflated.
    Inflated(Vec<u8>),
}

impl InMessage {
    fn new(kind: DataKind, compressed: bool) -> InMessage {
        let body = if compressed {
            Body::Inflated(Vec::new())
        } else {
            Body::Plain(BytesMut::new())
        };
        InMessage { kind, body }
    }

    fn compressed(&self) -> bool {
        matches!(self.body, Body::Inflated(_))
    }
}

/// A WebSocket connection after the handshake, with no I/O of its own.
///
/// Feed it bytes ([`handle_input`](Self::handle_input)) and time
/// ([`handle_timeout`](Self::handle_timeout)); poll it for events
/// ([`poll_event`](Self::poll_event)), for bytes to write ([`output`](Self::output)) and
/// for its next deadline ([`poll_timeout`](Self::poll_timeout)).
///
/// ```
/// use std::time::Instant;
/// use bytes::Buf;
/// use wsx_proto::{Config, Connection, Event, Message, Role};
///
/// let now = Instant::now();
/// let mut client = Connection::new(Role::Client, Config::default(), now);
/// let mut server = Connection::new(Role::Server, Config::default(), now);
/// client.send(Message::text("hello")).unwrap();
/// let out = client.output();
/// let bytes = out.copy_to_bytes(out.remaining());
/// server.handle_input(now, &bytes);
/// assert_eq!(server.poll_event().unwrap(), Some(Event::Message(Message::text("hello"))));
/// ```
#[derive(Debug)]
pub struct Connection {
    role: Role,
    /// Shared by the connections made with equal settings ([`shared_config`]).
    cfg: Arc<Config>,
    input: Deframer,
    output: OutBuffer,
    utf8: Utf8Validator,
    msg: Option<InMessage>,
    /// Boxed: most connections have none, and the codec is 320 bytes.
    deflate: Option<Box<DeflateCodec>>,
    /// An outgoing fragmented message in progress, and its UTF-8 state.
    out_msg: Option<DataKind>,
    out_utf8: Utf8Validator,
    sent_close: bool,
    recv_close: bool,
    closed: bool,
    /// A timeout that closed the connection, returned by the next `poll_event`.
    pending_timeout: Option<TimeoutKind>,
    /// The latest time passed in.
    now: Instant,
    last_recv: Instant,
    last_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    ping_seq: u64,
}

impl Connection {
    /// A connection in the open state; `now` starts the timers.
    pub fn new(role: Role, cfg: Config, now: Instant) -> Connection {
        Connection {
            role,
            cfg: shared_config(cfg),
            input: Deframer::default(),
            output: OutBuffer::default(),
            utf8: Utf8Validator::new(),
            msg: None,
            deflate: None,
            out_msg: None,
            out_utf8: Utf8Validator::new(),
            sent_close: false,
            recv_close: false,
            closed: false,
            pending_timeout: None,
            now,
            last_recv: now,
            last_ping: None,
            pong_deadline: None,
            close_deadline: None,
            ping_seq: 0,
        }
    }

    /// Turn on permessage-deflate with the negotiated parameters and our own level and
    /// threshold. Call before any frame is exchanged.
    pub fn enable_deflate(&mut self, params: DeflateParams, cfg: &DeflateConfig) {
        self.deflate = Some(Box::new(DeflateCodec::new(
            params,
            self.role == Role::Server,
            cfg.level,
            cfg.threshold,
        )));
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        if self.closed {
            State::Closed
        } else if self.sent_close {
            State::Closing
        } else {
            State::Open
        }
    }

    /// Whether permessage-deflate is on.
    pub fn is_compressed(&self) -> bool {
        self.deflate.is_some()
    }

    /// Whether input is still wanted: false after the peer's close frame or a failure.
    pub fn wants_input(&self) -> bool {
        !self.recv_close && !self.closed
    }

    // ---------------------------------------------------------------- input

    /// Bytes arrived from the peer at `now`. Then call [`poll_event`](Self::poll_event)
    /// until it returns `Ok(None)`.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.input.buf.extend_from_slice(data);
        self.input_received(now);
    }

    /// The read buffer, for an I/O layer that reads straight into it (no copy). After
    /// appending, call [`input_received`](Self::input_received).
    pub fn input_buffer(&mut self) -> &mut BytesMut {
        &mut self.input.buf
    }

    /// How many more bytes would let the core make progress (at least 1); a hint for
    /// how much room to reserve in the read buffer.
    pub fn input_wanted(&self) -> usize {
        self.input.wanted()
    }

    /// Whether [`input_received`](Self::input_received) needs to be told when input
    /// arrived: only keepalive pings and the idle timeout look at it. Without them an I/O
    /// layer can skip both the call and reading the clock on every read.
    pub fn tracks_input_time(&self) -> bool {
        self.cfg.ping_interval.is_some() || self.cfg.idle_timeout.is_some()
    }

    /// Bytes were appended to [`input_buffer`](Self::input_buffer) at `now`.
    pub fn input_received(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.last_recv = now;
        // Any bytes prove the peer alive.
        self.pong_deadline = None;
    }

    /// The next event, or `Ok(None)` when more input is needed (or none will come).
    ///
    /// An `Err` is returned once, for a protocol violation, a limit, or a timeout; the
    /// matching close frame is already queued and the state is [`State::Closed`].
    pub fn poll_event(&mut self) -> Result<Option<Event>, Error> {
        if let Some(kind) = self.pending_timeout.take() {
            return Err(Error::Timeout(kind));
        }
        if !self.wants_input() {
            return Ok(None);
        }
        loop {
            let step = {
                let Connection {
                    input,
                    utf8,
                    role,
                    cfg,
                    msg,
                    deflate,
                    ..
                } = self;
                let mut check =
                    |h: &FrameHeader| check_header(h, *role, cfg, msg.as_ref(), deflate.is_some());
                input.next_frame(&mut check, utf8)
            };
            match step {
                Ok(None) => return Ok(None),
                Ok(Some((header, payload))) => match self.on_frame(header, payload) {
                    Ok(Some(ev)) => return Ok(Some(ev)),
                    Ok(None) => continue,
                    Err(e) => return Err(self.fail(e)),
                },
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn on_frame(&mut self, h: FrameHeader, payload: BytesMut) -> Result<Option<Event>, Error> {
        match h.opcode {
            OpCode::Ping => {
                let payload = payload.freeze();
                if self.cfg.auto_pong && !self.sent_close {
                    self.write_control(OpCode::Pong, &payload);
                }
                Ok(Some(Event::Message(Message::Ping(payload))))
            }
            OpCode::Pong => Ok(Some(Event::Message(Message::Pong(payload.freeze())))),
            OpCode::Close => {
                let frame = parse_close_payload(&payload)?;
                self.recv_close = true;
                if !self.sent_close {
                    // RFC 6455 §5.5.1: reply with a close, echoing the status code.
                    let reply = frame.as_ref().map(|f| CloseFrame::new(f.code, ""));
                    self.write_close(reply.as_ref());
                }
                self.closed = true;
                self.close_deadline = None;
                Ok(Some(Event::Message(Message::Close(frame))))
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => self.on_data(h, payload),
        }
    }

    fn on_data(&mut self, h: FrameHeader, payload: BytesMut) -> Result<Option<Event>, Error> {
        let limit = self.cfg.max_message_size;
        if self.cfg.frame_mode {
            let first = h.opcode != OpCode::Continuation;
            let (kind, compressed) = match (&self.msg, h.opcode) {
                (Some(m), _) => (m.kind, m.compressed()),
                (None, op) => (kind_of(op), h.rsv1),
            };
            let data = if compressed {
                let mut out = Vec::new();
                self.inflate(&payload, h.fin, &mut out, limit)?;
                if kind == DataKind::Text {
                    self.utf8
                        .feed(&out)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                Bytes::from(out)
            } else {
                payload.freeze()
            };
            if h.fin {
                self.finish_text(kind)?;
                self.msg = None;
            } else if first {
                self.msg = Some(InMessage::new(kind, compressed));
            }
            return Ok(Some(Event::Frame(DataFrame {
                kind,
                first,
                fin: h.fin,
                payload: data,
            })));
        }
        let mut m = match self.msg.take() {
            None if h.fin && !h.rsv1 => {
                // The common case: a whole message in one frame, no copy.
                let kind = kind_of(h.opcode);
                self.finish_text(kind)?;
                return Ok(Some(Event::Message(data_message(kind, payload.freeze()))));
            }
            None => InMessage::new(kind_of(h.opcode), h.rsv1),
            Some(m) => m,
        };
        match &mut m.body {
            Body::Inflated(inflated) => {
                let before = inflated.len();
                self.inflate(&payload, h.fin, inflated, limit)?;
                if m.kind == DataKind::Text {
                    self.utf8
                        .feed(&inflated[before..])
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
            }
            Body::Plain(plain) if plain.is_empty() => *plain = payload,
            Body::Plain(plain) => plain.extend_from_slice(&payload),
        }
        if !h.fin {
            self.msg = Some(m);
            return Ok(None);
        }
        self.finish_text(m.kind)?;
        let data = match m.body {
            Body::Inflated(inflated) => Bytes::from(inflated),
            Body::Plain(plain) => plain.freeze(),
        };
        Ok(Some(Event::Message(data_message(m.kind, data))))
    }

    fn inflate(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), Error> {
        match self.deflate.as_mut() {
            Some(d) => d.decompress(input, fin, out, limit),
            // check_header refuses RSV1 without deflate.
            None => Err(ProtocolError::ReservedBits.into()),
        }
    }

    /// At the end of a message: text must end on a code point boundary.
    fn finish_text(&mut self, kind: DataKind) -> Result<(), Error> {
        if kind == DataKind::Text {
            let complete = self.utf8.is_complete();
            self.utf8.reset();
            if !complete {
                return Err(ProtocolError::InvalidUtf8.into());
            }
        }
        Ok(())
    }

    /// Fail the connection: queue the close frame for `err` and stop.
    fn fail(&mut self, err: Error) -> Error {
        if !self.sent_close {
            if let Some(code) = err.close_code() {
                let reason = match &err {
                    Error::Protocol(p) => p.reason().to_string(),
                    other => other.to_string(),
                };
                self.write_close(Some(&CloseFrame::new(code, reason)));
            }
            self.sent_close = true;
        }
        self.closed = true;
        self.msg = None;
        self.close_deadline = None;
        self.pong_deadline = None;
        err
    }

    /// Fail the connection for a timeout, reported by the next `poll_event`.
    fn time_out(&mut self, kind: TimeoutKind) {
        self.fail(Error::Timeout(kind));
        self.pending_timeout = Some(kind);
    }

    // ---------------------------------------------------------------- output

    /// Queue a message. Text and binary messages are compressed when permessage-deflate
    /// is on and they reach the threshold, and fragmented when `fragment_size` is set.
    /// A `Message::Close` starts the close handshake as [`close`](Self::close) does, with
    /// the latest time passed in as its start.
    pub fn send(&mut self, msg: Message) -> Result<(), Error> {
        match msg {
            Message::Text(t) => self.send_data(OpCode::Text, t.into_bytes()),
            Message::Binary(b) => self.send_data(OpCode::Binary, b),
            Message::Ping(p) => self.send_control(OpCode::Ping, p),
            Message::Pong(p) => self.send_control(OpCode::Pong, p),
            Message::Close(frame) => {
                let now = self.now;
                self.close(now, frame)
            }
        }
    }

    fn check_can_send(&self) -> Result<(), Error> {
        if self.sent_close || self.closed {
            Err(Error::AlreadyClosed)
        } else {
            Ok(())
        }
    }

    fn mask_key(&self) -> Option<[u8; 4]> {
        match self.role {
            // RFC 6455 §5.3: a fresh, unpredictable key for every frame.
            Role::Client => Some(rand::random()),
            Role::Server => None,
        }
    }

    fn send_data(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), Error> {
        self.check_can_send()?;
        if self.out_msg.is_some() {
            return Err(Error::InvalidInput("a fragmented message is being sent"));
        }
        let (payload, rsv1) = match self.deflate.as_mut() {
            Some(d) if d.should_compress(payload.len()) => (d.compress(&payload), true),
            _ => (payload, false),
        };
        match self.cfg.fragment_size {
            Some(size) if size > 0 && payload.len() > size => {
                let mut rest = payload;
                let mut op = opcode;
                let mut rsv = rsv1;
                while !rest.is_empty() {
                    let part = rest.split_to(size.min(rest.len()));
                    let fin = rest.is_empty();
                    let key = self.mask_key();
                    write_frame(
                        &mut self.output,
                        op,
                        fin,
                        rsv,
                        key,
                        &part,
                        self.cfg.copy_threshold,
                    );
                    op = OpCode::Continuation;
                    rsv = false;
                }
            }
            _ => {
                let key = self.mask_key();
                write_frame(
                    &mut self.output,
                    opcode,
                    true,
                    rsv1,
                    key,
                    &payload,
                    self.cfg.copy_threshold,
                );
            }
        }
        Ok(())
    }

    /// Send one frame of a message, for streaming a large message without holding it
    /// whole. The first call starts a message of `kind`; later calls continue it until
    /// one passes `fin = true`. Frames sent this way are not compressed. Text fragments
    /// are checked to be UTF-8 (a code point may span fragments).
    pub fn send_frame(&mut self, kind: DataKind, payload: Bytes, fin: bool) -> Result<(), Error> {
        self.check_can_send()?;
        let opcode = match self.out_msg {
            None => match kind {
                DataKind::Text => OpCode::Text,
                DataKind::Binary => OpCode::Binary,
            },
            Some(k) if k == kind => OpCode::Continuation,
            Some(_) => {
                return Err(Error::InvalidInput(
                    "fragment kind differs from its message",
                ))
            }
        };
        if kind == DataKind::Text {
            if opcode == OpCode::Text {
                self.out_utf8.reset();
            }
            self.out_utf8
                .feed(&payload)
                .map_err(|_| Error::InvalidInput("text fragment is not UTF-8"))?;
            if fin && !self.out_utf8.is_complete() {
                return Err(Error::InvalidInput("text message ends inside a code point"));
            }
        }
        let key = self.mask_key();
        write_frame(
            &mut self.output,
            opcode,
            fin,
            false,
            key,
            &payload,
            self.cfg.copy_threshold,
        );
        self.out_msg = if fin { None } else { Some(kind) };
        Ok(())
    }

    /// Queue a pre-encoded frame (server role only): the bytes are shared, not copied.
    pub fn send_shared(&mut self, frame: &SharedFrame) -> Result<(), Error> {
        if self.role == Role::Client {
            return Err(Error::InvalidInput("a client must mask each frame itself"));
        }
        self.check_can_send()?;
        if self.out_msg.is_some() {
            return Err(Error::InvalidInput("a fragmented message is being sent"));
        }
        match self.deflate.as_mut() {
            Some(d) if d.should_compress(frame.payload_len()) => {
                let (bits, level) = d.send_window_and_level();
                let shared = if d.resets_after_each_message() {
                    frame.deflated(bits, level)
                } else {
                    None
                };
                match shared {
                    // Compressed once for every connection that resets its context.
                    Some(bytes) => self.output.push_bytes(bytes),
                    // This connection's own context (or an unusual window): its own copy.
                    None => {
                        let payload = d.compress(frame.payload());
                        write_frame(
                            &mut self.output,
                            frame.opcode(),
                            true,
                            true,
                            None,
                            &payload,
                            self.cfg.copy_threshold,
                        );
                    }
                }
            }
            _ => self.output.push_bytes(frame.as_bytes().clone()),
        }
        Ok(())
    }

    /// [`send_shared`](Self::send_shared), the frame's bytes offered to `write` first
    /// when nothing waits before them and they go as they are (uncompressed): `write`
    /// takes what it can (a non-blocking send; 0 when it takes nothing, an error
    /// included, which the next write of the output meets again) and only the rest is
    /// queued. For a fan-out: a connection that keeps up costs one send and no
    /// bookkeeping of its output.
    pub fn send_shared_with(
        &mut self,
        frame: &SharedFrame,
        write: impl FnOnce(&[u8]) -> usize,
    ) -> Result<(), Error> {
        let direct = self.role == Role::Server
            && self.output.is_empty()
            && self.out_msg.is_none()
            && !self
                .deflate
                .as_ref()
                .is_some_and(|d| d.should_compress(frame.payload_len()));
        if !direct {
            return self.send_shared(frame);
        }
        self.check_can_send()?;
        let bytes = frame.as_bytes();
        let n = write(bytes).min(bytes.len());
        if n < bytes.len() {
            self.output.push_bytes(bytes.slice(n..));
        }
        Ok(())
    }

    fn send_control(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), Error> {
        self.check_can_send()?;
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(Error::InvalidInput("control frame payload over 125 bytes"));
        }
        self.write_control(opcode, &payload);
        Ok(())
    }

    fn write_control(&mut self, opcode: OpCode, payload: &Bytes) {
        let key = self.mask_key();
        write_frame(
            &mut self.output,
            opcode,
            true,
            false,
            key,
            payload,
            usize::MAX,
        );
    }

    fn write_close(&mut self, frame: Option<&CloseFrame>) {
        let payload = encode_close_payload(frame);
        self.write_control(OpCode::Close, &payload);
        self.sent_close = true;
    }

    /// Start the close handshake at `now` (RFC 6455 §7.1.2): queue a close frame; the
    /// peer's reply is awaited until `now + close_timeout`. `None` sends a close frame
    /// without a status code. Codes not allowed on the wire (1005, 1006, ...) are refused.
    pub fn close(&mut self, now: Instant, frame: Option<CloseFrame>) -> Result<(), Error> {
        self.check_can_send()?;
        if let Some(f) = &frame {
            if !f.code.is_allowed_on_wire() {
                return Err(Error::InvalidInput("close code not allowed on the wire"));
            }
        }
        self.write_close(frame.as_ref());
        if self.recv_close {
            self.closed = true;
        } else {
            self.close_deadline = Some(now + self.cfg.close_timeout);
        }
        Ok(())
    }

    /// The bytes to write, in order. Drain with `chunks_vectored`/`chunk` and `advance`.
    pub fn output(&mut self) -> &mut OutBuffer {
        &mut self.output
    }

    /// Bytes waiting to be written (for backpressure decisions).
    pub fn output_len(&self) -> usize {
        self.output.len()
    }

    // ---------------------------------------------------------------- time

    /// The earliest deadline, if any: call [`handle_timeout`](Self::handle_timeout) then.
    /// Changes after input, output and timeouts, so ask again after each.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        if self.sent_close {
            return self.close_deadline;
        }
        let ping = match (self.cfg.ping_interval, self.pong_deadline) {
            (Some(iv), None) => {
                Some(self.last_recv.max(self.last_ping.unwrap_or(self.last_recv)) + iv)
            }
            _ => None,
        };
        let idle = self.cfg.idle_timeout.map(|t| self.last_recv + t);
        [ping, self.pong_deadline, idle].into_iter().flatten().min()
    }

    /// Time passed: send keepalive pings, fail on a missed pong or idleness, end a close
    /// handshake the peer did not finish. Errors surface through
    /// [`poll_event`](Self::poll_event).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.closed {
            return;
        }
        if self.sent_close {
            if self.close_deadline.is_some_and(|d| now >= d) {
                self.time_out(TimeoutKind::Close);
            }
            return;
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            self.time_out(TimeoutKind::Keepalive);
            return;
        }
        if self
            .cfg
            .idle_timeout
            .is_some_and(|t| now >= self.last_recv + t)
        {
            self.time_out(TimeoutKind::Idle);
            return;
        }
        if let Some(iv) = self.cfg.ping_interval {
            let since = self.last_recv.max(self.last_ping.unwrap_or(self.last_recv));
            if self.pong_deadline.is_none() && now >= since + iv {
                self.ping_seq += 1;
                let payload = Bytes::copy_from_slice(&self.ping_seq.to_be_bytes());
                self.write_control(OpCode::Ping, &payload);
                self.last_ping = Some(now);
                self.pong_deadline = Some(now + self.cfg.pong_timeout);
            }
        }
    }
}

fn kind_of(op: OpCode) -> DataKind {
    if op == OpCode::Text {
        DataKind::Text
    } else {
        DataKind::Binary
    }
}

fn data_message(kind: DataKind, data: Bytes) -> Message {
    match kind {
        DataKind::Text => Message::Text(Text::from_validated(data)),
        DataKind::Binary => Message::Binary(data),
    }
}

/// The rules a header is checked against before its payload is read. Returns whether the
/// payload is uncompressed text to validate as it arrives.
fn check_header(
    h: &FrameHeader,
    role: Role,
    cfg: &Config,
    msg: Option<&InMessage>,
    deflate: bool,
) -> Result<bool, Error> {
    match (role, h.mask.is_some()) {
        (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame.into()),
        (Role::Client, true) => return Err(ProtocolError::MaskedFrame.into()),
        _ => {}
    }
    if h.rsv2 || h.rsv3 || (h.rsv1 && !deflate) {
        return Err(ProtocolError::ReservedBits.into());
    }
    if h.rsv1 && (h.opcode.is_control() || h.opcode == OpCode::Continuation) {
        return Err(ProtocolError::InvalidCompressionBit.into());
    }
    if h.payload_len > cfg.max_frame_size as u64 {
        return Err(CapacityError {
            kind: CapacityKind::Frame,
            size: h.payload_len,
            max: cfg.max_frame_size as u64,
        }
        .into());
    }
    match (h.opcode, msg) {
        (OpCode::Continuation, None) => Err(ProtocolError::UnexpectedContinuation.into()),
        (OpCode::Text | OpCode::Binary, Some(_)) => Err(ProtocolError::ExpectedContinuation.into()),
        (OpCode::Continuation, Some(m)) => {
            let so_far = match &m.body {
                Body::Plain(plain) => plain.len() as u64,
                // Its inflated size is checked as it inflates.
                Body::Inflated(_) => 0,
            };
            if !cfg.frame_mode
                && !m.compressed()
                && so_far + h.payload_len > cfg.max_message_size as u64
            {
                return Err(CapacityError {
                    kind: CapacityKind::Message,
                    size: so_far + h.payload_len,
                    max: cfg.max_message_size as u64,
                }
                .into());
            }
            Ok(m.kind == DataKind::Text && !m.compressed())
        }
        (OpCode::Text | OpCode::Binary, None) => {
            if !cfg.frame_mode && !h.rsv1 && h.payload_len > cfg.max_message_size as u64 {
                return Err(CapacityError {
                    kind: CapacityKind::Message,
                    size: h.payload_len,
                    max: cfg.max_message_size as u64,
                }
                .into());
            }
            Ok(h.opcode == OpCode::Text && !h.rsv1)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_made_with_equal_settings_share_one_copy() {
        let now = Instant::now();
        let a = Connection::new(Role::Server, Config::default(), now);
        let b = Connection::new(Role::Server, Config::default(), now);
        assert!(
            std::ptr::eq(a.config(), b.config()),
            "equal settings, one copy"
        );
        let other = Config {
            max_message_size: 1234,
            ..Config::default()
        };
        let c = Connection::new(Role::Server, other.clone(), now);
        assert!(
            !std::ptr::eq(a.config(), c.config()),
            "other settings, their own"
        );
        assert_eq!(c.config(), &other);
        assert_eq!(a.config(), &Config::default(), "the first kept its own");
    }
}
