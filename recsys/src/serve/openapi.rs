//! The OpenAPI 3.1 document of the server, generated from the handlers' `#[utoipa::path]`
//! attributes and the request and response types themselves.
//!
//! Why utoipa: it derives schemas from the same structs that serde writes (field names,
//! optional fields, doc comments as descriptions) and operations from attributes on the
//! handlers, so a field added to a response type appears in the document with no second
//! edit; schemars would give the schemas only, leaving the paths hand-written. What the
//! types cannot say is checked by tests: that every route of the router is documented
//! (below), and that the request parser accepts exactly the documented fields
//! (`request.rs`).

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema};

use super::{
    ErrorBody, ErrorDetail, Health, KernelInfo, RawId, RecommendBody, Recommendation,
    Recommendations,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "evokernel recsys",
        description = "Sequential recommendations from a SASRec-style transformer whose attention is an AKL kernel. Every error is `{\"error\": {\"field\", \"message\"}}`."
    ),
    paths(
        super::recommend,
        super::similar,
        super::healthz,
        super::metrics_text,
        super::openapi_json
    ),
    components(schemas(
        RecommendBody,
        RawId,
        Recommendations,
        Recommendation,
        KernelInfo,
        Health,
        ErrorBody,
        ErrorDetail
    )),
    modifiers(&AnyRoute, &ExactlyOneWho)
)]
struct ApiDoc;

/// A `RecommendBody` names exactly one of `user_id` and `history`, which a struct's schema
/// cannot say: the document adds a `oneOf` of the two `required` lists (both given would
/// match both, neither would match none).
struct ExactlyOneWho;

impl Modify for ExactlyOneWho {
    fn modify(&self, document: &mut Document) {
        let Some(components) = document.components.as_mut() else {
            return;
        };
        let Some(body) = components.schemas.remove("RecommendBody") else {
            return;
        };
        let who = OneOfBuilder::new()
            .item(ObjectBuilder::new().required("user_id"))
            .item(ObjectBuilder::new().required("history"));
        components.schemas.insert(
            "RecommendBody".to_string(),
            AllOfBuilder::new().item(body).item(who).into(),
        );
    }
}

/// The answers any route may give, whatever its handler does: the connection layer's and
/// the router's own.
struct AnyRoute;

const ANY_ROUTE: [(&str, &str); 5] = [
    (
        "400",
        "The request line or a header is not valid HTTP/1.1 (field `request`), or a path part is not valid percent-encoded UTF-8.",
    ),
    (
        "405",
        "The path exists, the method does not (field `method`); `Allow` lists the methods.",
    ),
    (
        "408",
        "The request did not arrive in time (field `headers` or `body`).",
    ),
    (
        "431",
        "The request line and headers exceed the size limit (field `headers`).",
    ),
    (
        "503",
        "The server is answering as many requests as it may; `Retry-After` says when to try again.",
    ),
];

impl Modify for AnyRoute {
    fn modify(&self, document: &mut Document) {
        for item in document.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
                &mut item.query,
            ];
            for operation in operations.into_iter().flatten() {
                add_any_route_answers(operation);
            }
        }
    }
}

fn add_any_route_answers(operation: &mut Operation) {
    for (status, description) in ANY_ROUTE {
        let mut response = ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        );
        if status == "503" {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(Some(<u32 as PartialSchema>::schema()))
                    .description(Some("Seconds to wait before trying again."))
                    .build(),
            );
        }
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| response.build().into());
    }
}

/// The document as `/openapi.json` serves it.
pub(super) fn document_json() -> Vec<u8> {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_default()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::serve::{routes, MAX_K};

    fn document() -> Value {
        serde_json::from_slice(&document_json()).unwrap()
    }

    #[test]
    fn every_route_of_the_router_is_in_the_document_and_nothing_else() {
        let document = document();
        let paths = document["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let mut routed: Vec<(String, String)> = routes()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(routed, documented);
    }

    #[test]
    fn every_operation_documents_the_answers_any_route_may_give() {
        let document = document();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, _) in ANY_ROUTE {
                    let response = &operation["responses"][status];
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
                assert!(operation["responses"]["503"]["headers"]
                    .get("Retry-After")
                    .is_some());
            }
        }
    }

    #[test]
    fn the_document_asks_for_exactly_one_of_user_id_and_history_never_null() {
        let document = document();
        let body = &document["components"]["schemas"]["RecommendBody"]["allOf"];
        assert_eq!(body[0]["additionalProperties"], false);
        let required: Vec<&Value> = body[1]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|alternative| &alternative["required"])
            .collect();
        assert_eq!(
            required,
            [
                &serde_json::json!(["user_id"]),
                &serde_json::json!(["history"])
            ]
        );
        for (name, property) in body[0]["properties"].as_object().unwrap() {
            assert!(!property.to_string().contains("null"), "{name}: {property}");
        }
    }

    #[test]
    fn the_documented_k_limit_is_the_servers() {
        let document = document();
        let body_k =
            &document["components"]["schemas"]["RecommendBody"]["allOf"][0]["properties"]["k"];
        assert_eq!(body_k["maximum"], MAX_K);
        let similar = &document["paths"]["/v1/items/{id}/similar"]["get"]["parameters"];
        let k = similar
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "k")
            .unwrap();
        assert_eq!(k["schema"]["maximum"], MAX_K);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_kernel_schema() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        let schemas = &document["components"]["schemas"];
        assert_eq!(
            schemas["Recommendations"]["properties"]["kernel"]["$ref"],
            "#/components/schemas/KernelInfo"
        );
        assert_eq!(
            schemas["KernelInfo"]["required"],
            serde_json::json!(["name", "hash"])
        );
        assert!(schemas["Recommendations"]["properties"]
            .get("explanations_unavailable")
            .is_some());
    }
}
