//! The body of `POST /v1/recommend` from arbitrary bytes: parsing and validation must answer
//! every body with a request or a 4xx error that names the field at fault.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recsys::serve::{RecommendRequest, Who};

fuzz_target!(|bytes: &[u8]| {
    match RecommendRequest::parse(bytes) {
        Ok(request) => {
            if let Who::History(items) = &request.who {
                assert!(!items.is_empty(), "an empty history was accepted");
            }
        }
        Err(error) => {
            assert!(error.status.is_client_error(), "{error:?}");
            // The field at fault is named; only an unknown key may be the empty string.
            assert!(
                !error.field.is_empty() || error.message.starts_with("unknown field \"\""),
                "{error:?}"
            );
        }
    }
});
