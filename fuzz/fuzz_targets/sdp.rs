//! SDP: parse, profile check, and negotiation both ways. The input as a remote offer is agreed
//! and answered under the WhatsApp profile and the PBX profile; as a remote answer it is accepted
//! against our offers. Checks: what parses prints and parses again; an agreed offer always gets an
//! answer (only our configuration can fail there, and it is complete); our answer parses again.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use rand::rngs::mock::StepRng;
use watrunk_sdp::{
    self as sdp, Capabilities, Codec, Fingerprint, Kind, LocalMedia, OfferState, Profile, Security,
    Side,
};

fn local(caps: &Capabilities) -> LocalMedia {
    let addr: SocketAddr = "192.0.2.10:40000".parse().unwrap();
    LocalMedia::for_capabilities(caps, &mut StepRng::new(1, 1))
        .with_candidates([addr])
        .with_fingerprint(Fingerprint::sha256(vec![0xab; 32]))
}

fuzz_target!(|data: &[u8]| {
    let Ok(session) = sdp::parse(data) else {
        return;
    };
    let printed = sdp::print(&session);
    let again = sdp::parse(printed.as_bytes())
        .unwrap_or_else(|e| panic!("printed SDP does not parse: {e}\n{printed}"));
    assert_eq!(sdp::print(&again), printed, "printing is not stable");

    for side in [Side::Business, Side::Meta] {
        for kind in [None, Some(Kind::Offer), Some(Kind::Answer)] {
            let _ = sdp::check(&session, side, kind);
        }
    }

    let all = vec![
        Codec::Opus,
        Codec::Pcmu,
        Codec::Pcma,
        Codec::G722,
        Codec::TelephoneEvent,
    ];
    let caps = [
        Capabilities::whatsapp(Security::Dtls),
        Capabilities::whatsapp(Security::Sdes),
        Capabilities::pbx(Security::Plain, all.clone()),
        Capabilities::pbx(Security::Sdes, vec![Codec::Pcma, Codec::TelephoneEvent]),
        Capabilities::pbx(Security::Dtls, all),
    ];
    for caps in &caps {
        let local = local(caps);
        // The input as the far side's offer.
        if let Ok(agreed) = sdp::agree(session.clone(), caps) {
            let _ = (agreed.plan(), agreed.security(), agreed.ice_role());
            let (answer, _plan) = agreed
                .answer(&local)
                .unwrap_or_else(|e| panic!("agreed offer got no answer: {e}"));
            let wire = sdp::print(&answer);
            sdp::parse(wire.as_bytes())
                .unwrap_or_else(|e| panic!("our answer does not parse: {e}\n{wire}"));
        }
        // The input as the far side's answer to our offer.
        if let Ok(state) = sdp::offer(&local) {
            let _ = sdp::accept_answer(&state, &session);
        }
    }
    for profile in [Profile::WhatsApp, Profile::Pbx] {
        if let Ok(state) = OfferState::from_sdp(profile, &session) {
            let _ = sdp::accept_answer(&state, &session);
        }
    }
});
