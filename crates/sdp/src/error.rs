//! The rules an SDP can break, one variant each. Every error says whose fault it is: the remote's SDP
//! breaks a rule of the profile (`488 Not Acceptable Here`), or our own configuration cannot produce
//! the SDP (`500`). The call layer sends `status()` with `Warning: 399 <host> "<message>"`.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Syntax(String),
    #[error("SDP is larger than {limit} octets")]
    TooLarge { limit: usize },
    #[error("no audio m-line")]
    NoAudio,
    #[error("several audio m-lines ({0}); one is allowed")]
    SeveralAudio(usize),
    #[error("m={0} line is not allowed beside the audio stream")]
    ExtraMedia(String),
    #[error("transport {got} is not allowed; {want} is required")]
    Transport { got: String, want: &'static str },
    #[error("no opus/48000/2 in the offer")]
    NoOpus,
    #[error("no codec in common (offered: {offered}; accepted: {accepted})")]
    NoCommonCodec { offered: String, accepted: String },
    #[error("ptime {0} is not allowed; ptime must be 20")]
    Ptime(u32),
    #[error("maxptime {0} is below 20")]
    Maxptime(u32),
    #[error("several SSRCs ({0}); one is allowed")]
    SeveralSsrcs(usize),
    #[error("no a=rtcp-mux")]
    NoRtcpMux,
    #[error("no ICE credentials (a=ice-ufrag/a=ice-pwd) in DTLS mode")]
    NoIceCredentials,
    #[error("ICE credential {0} is malformed")]
    BadIceCredential(&'static str),
    #[error("no usable ICE candidate (UDP, IP address) toward an ICE-lite peer")]
    NoCandidates,
    #[error("no a=fingerprint in DTLS mode")]
    NoFingerprint,
    #[error("{0} a=fingerprint lines; exactly one sha-256 is allowed")]
    SeveralFingerprints(usize),
    #[error("fingerprint algorithm {0} is not sha-256")]
    FingerprintAlgorithm(String),
    #[error("fingerprint is malformed: {0}")]
    BadFingerprint(String),
    #[error("fingerprint hex must be uppercase")]
    FingerprintCase,
    #[error("a=setup:{0} is not allowed here ({1})")]
    Setup(String, &'static str),
    #[error("a=ice-lite is not allowed: the business side is ICE-full")]
    IceLite,
    #[error("a=ice-options:trickle is not allowed: SIP carries complete candidates")]
    Trickle,
    #[error("no a=crypto in SDES mode")]
    NoCrypto,
    #[error("no supported crypto suite (offered: {0}; supported: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32)")]
    UnsupportedCryptoSuite(String),
    #[error("a=crypto is malformed: {0}")]
    BadCrypto(String),
    #[error("an SDES answer carries exactly one a=crypto, this one has {0}")]
    SeveralCryptoInAnswer(usize),
    #[error("the answer's a=crypto tag {0} or its suite was not offered")]
    CryptoNotOffered(u32),
    #[error("telephone-event is offered only at {0} Hz; 8000 Hz is required")]
    DtmfClock(u32),
    #[error("the answer's payload type {0} was not offered")]
    PayloadNotOffered(u8),
    #[error("the audio stream was rejected (port 0)")]
    Rejected,
    #[error("no connection address for the audio stream")]
    NoConnection,
    #[error("local configuration: {0}")]
    Local(String),
}

impl SdpError {
    /// A stable short name for the rule, for tests, logs and metrics.
    pub fn rule(&self) -> &'static str {
        use SdpError::*;
        match self {
            Syntax(_) => "syntax",
            TooLarge { .. } => "too-large",
            NoAudio => "no-audio",
            SeveralAudio(_) => "several-audio",
            ExtraMedia(_) => "extra-media",
            Transport { .. } => "transport",
            NoOpus => "no-opus",
            NoCommonCodec { .. } => "no-common-codec",
            Ptime(_) => "ptime",
            Maxptime(_) => "maxptime",
            SeveralSsrcs(_) => "several-ssrcs",
            NoRtcpMux => "no-rtcp-mux",
            NoIceCredentials => "no-ice-credentials",
            BadIceCredential(_) => "bad-ice-credential",
            NoCandidates => "no-candidates",
            NoFingerprint => "no-fingerprint",
            SeveralFingerprints(_) => "several-fingerprints",
            FingerprintAlgorithm(_) => "fingerprint-algorithm",
            BadFingerprint(_) => "bad-fingerprint",
            FingerprintCase => "fingerprint-case",
            Setup(..) => "setup",
            IceLite => "ice-lite",
            Trickle => "trickle",
            NoCrypto => "no-crypto",
            UnsupportedCryptoSuite(_) => "crypto-suite",
            BadCrypto(_) => "bad-crypto",
            SeveralCryptoInAnswer(_) => "several-crypto",
            CryptoNotOffered(_) => "crypto-not-offered",
            DtmfClock(_) => "dtmf-clock",
            PayloadNotOffered(_) => "payload-not-offered",
            Rejected => "rejected",
            NoConnection => "no-connection",
            Local(_) => "local",
        }
    }

    /// Whether the fault is ours (configuration) rather than the remote SDP's.
    pub fn is_local(&self) -> bool {
        matches!(self, SdpError::Local(_))
    }

    /// The SIP status for a rejected offer: 488 for the remote's SDP, 500 for our configuration.
    pub fn status(&self) -> u16 {
        if self.is_local() {
            500
        } else {
            488
        }
    }

    /// The value of a `Warning` header (RFC 3261 §20.43) naming the rule: `399 host "text"`.
    pub fn warning(&self, host: &str) -> String {
        let text = self.to_string().replace(['"', '\\'], "'");
        format!("399 {host} \"{text}\"")
    }
}
