-- The RecGPT enrichment cache: what the local LLM said about users and items.
-- Every row is keyed by what produced it: `dataset` (the fingerprint of the interactions and
-- metadata the prompt was built from), `model` (the GGUF file's name) and `prompt_version`
-- (bumped whenever a prompt changes), so that another model, dataset or prompt never reads
-- these rows. A reply the parser could not use is kept with `problem` saying why, so that a
-- rerun does not ask again.

CREATE TABLE recgpt_profiles (
    dataset        TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    prompt_version INTEGER NOT NULL,
    -- The dataset's raw user id.
    user_id        TEXT    NOT NULL,
    -- The interest profile in a sentence or two; empty when the reply had none.
    profile        TEXT    NOT NULL,
    -- A JSON array of normalised tags; empty when the reply had none usable.
    tags_json      TEXT    NOT NULL,
    -- The model's reply exactly as it came.
    reply          TEXT    NOT NULL,
    -- NULL when the reply parsed; otherwise what was wrong with it.
    problem        TEXT,
    seconds        REAL    NOT NULL,
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (dataset, model, prompt_version, user_id)
);

CREATE TABLE recgpt_item_tags (
    dataset        TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    prompt_version INTEGER NOT NULL,
    -- The dataset's raw item id.
    item_id        TEXT    NOT NULL,
    tags_json      TEXT    NOT NULL,
    reply          TEXT    NOT NULL,
    problem        TEXT,
    seconds        REAL    NOT NULL,
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (dataset, model, prompt_version, item_id)
);

CREATE TABLE recgpt_explanations (
    dataset        TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    prompt_version INTEGER NOT NULL,
    user_id        TEXT    NOT NULL,
    item_id        TEXT    NOT NULL,
    -- One sentence; empty when the reply had none usable.
    sentence       TEXT    NOT NULL,
    reply          TEXT    NOT NULL,
    problem        TEXT,
    seconds        REAL    NOT NULL,
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (dataset, model, prompt_version, user_id, item_id)
);
