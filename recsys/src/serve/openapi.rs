//! The OpenAPI 3 document of the server, written by hand to match the routes in `mod.rs`.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn recommendations() -> Value {
    json!({
        "description": "Items, best first.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Recommendations"}}}
    })
}

/// The whole document.
pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "evokernel recsys",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Sequential recommendations from a SASRec-style transformer whose attention is an AKL kernel."
        },
        "paths": {
            "/v1/recommend": {"post": {
                "summary": "Recommend items for a known user or an ad-hoc history.",
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/RecommendRequest"}}}},
                "responses": {
                    "200": recommendations(),
                    "400": error_response("Malformed JSON, or a body that is not an object (field `body`)."),
                    "404": error_response("Unknown user (`user_id`) or item (`history[i]`)."),
                    "413": error_response("The body exceeds the size limit (field `body`)."),
                    "422": error_response("A field with an unacceptable value: k out of range, empty history, both or neither of user_id and history, an unknown field.")
                }
            }},
            "/v1/items/{id}/similar": {"get": {
                "summary": "Items whose embeddings are closest (cosine) to an item's.",
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "k", "in": "query", "required": false,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}}
                ],
                "responses": {
                    "200": recommendations(),
                    "404": error_response("Unknown item (field `id`)."),
                    "422": error_response("k out of range or not a number (field `k`).")
                }
            }},
            "/healthz": {"get": {
                "summary": "Liveness, with the model name, the kernel and the catalogue size.",
                "responses": {"200": {"description": "Serving.", "content": {"application/json": {
                    "schema": {"type": "object", "properties": {
                        "status": {"type": "string"}, "model": {"type": "string"},
                        "kernel": {"$ref": "#/components/schemas/Kernel"},
                        "items": {"type": "integer"}, "users": {"type": "integer"}}}}}}}
            }},
            "/metrics": {"get": {
                "summary": "Prometheus text: the kernel served as the gauge recsys_kernel_info{name, hash[, program_id, campaign]} = 1, requests by route and status, latency histograms.",
                "responses": {"200": {"description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }},
            "/openapi.json": {"get": {
                "summary": "This document.",
                "responses": {"200": {"description": "OpenAPI 3 JSON.",
                    "content": {"application/json": {"schema": {"type": "object"}}}}}
            }}
        },
        "components": {"schemas": {
            "RecommendRequest": {
                "type": "object",
                "additionalProperties": false,
                "description": "Exactly one of user_id and history.",
                "properties": {
                    "user_id": {"oneOf": [{"type": "string"}, {"type": "integer"}],
                        "description": "A user of the training data; their whole history is used."},
                    "history": {"type": "array", "minItems": 1,
                        "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                        "description": "Item ids, oldest first."},
                    "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    "exclude_seen": {"type": "boolean", "default": true,
                        "description": "Leave out items already in the history."},
                    "explain": {"type": "boolean", "default": false,
                        "description": "Add each item's cached RecGPT explanation as `reason` (for a `user_id` whose explanations `evokernel recsys enrich` wrote; none for an ad-hoc history)."}
                }
            },
            "Recommendations": {
                "type": "object",
                "required": ["items", "model", "kernel"],
                "properties": {
                    "items": {"type": "array", "items": {
                        "type": "object",
                        "required": ["item_id", "title", "score"],
                        "properties": {
                            "item_id": {"type": "string"},
                            "title": {"type": "string"},
                            "score": {"type": "number"},
                            "reason": {"type": "string", "description": "Why this user may like the item, in one sentence; only with `explain: true` and a cached explanation."}
                        }
                    }},
                    "model": {"type": "string", "description": "sasrec@ and the kernel hash's first 12 hex digits."},
                    "kernel": {"$ref": "#/components/schemas/Kernel"}
                }
            },
            "Kernel": {
                "type": "object",
                "description": "The attention kernel that ranked the items.",
                "required": ["name", "hash"],
                "properties": {
                    "name": {"type": "string", "description": "The AKL program's name."},
                    "hash": {"type": "string", "description": "SHA-256 of the kernel's canonical AKL text (64 hex digits): its identity in the discovered-kernel database."},
                    "program_id": {"type": "integer", "description": "Its program id in the database, when a campaign found it."},
                    "campaign": {"type": "string", "description": "The campaign that found it."}
                }
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}
            }
        }}
    })
}
