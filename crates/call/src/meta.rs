//! Meta's own headers on an INVITE or BYE (WHATSAPP-SIP §4.5, §4.6), for the events.

use watrunk_sip::Request;

/// Meta's headers on an INVITE or BYE, both spellings (`x-wa-meta-*` and the older `X-WA-Meta-*`
/// differ only in case, which header lookup ignores).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaHeaders {
    /// `x-wa-meta-wacid`, else the Call-ID.
    pub call_id: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub country_code: Option<String>,
    pub cta_payload: Option<String>,
    pub deeplink_payload: Option<String>,
}

impl MetaHeaders {
    pub fn of(req: &Request) -> MetaHeaders {
        let get = |n: &str| req.headers.get(n).map(str::to_string);
        MetaHeaders {
            call_id: get("x-wa-meta-wacid").or_else(|| req.call_id().map(str::to_string)),
            user_id: get("x-wa-meta-user-id"),
            user_name: get("x-wa-meta-user-name"),
            country_code: get("x-wa-meta-user-country-code"),
            cta_payload: get("x-wa-meta-cta-payload"),
            deeplink_payload: get("x-wa-meta-deeplink-payload"),
        }
    }
}
