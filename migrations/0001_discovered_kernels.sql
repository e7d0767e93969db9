-- The discovered-kernel database: every campaign, every program it proposed, every
-- evaluation, every LLM call, and the search state a resumed campaign needs.
-- Timestamps are UTC ISO 8601 text with milliseconds.

CREATE TABLE campaigns (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    -- The campaign's TOML config exactly as it was started, so a resume needs no file.
    config_toml     TEXT    NOT NULL,
    -- The RNG seed, bit for bit (a u64 stored as i64).
    seed            INTEGER NOT NULL,
    strategy        TEXT    NOT NULL CHECK (strategy IN ('evolve', 'random')),
    status          TEXT    NOT NULL DEFAULT 'running'
                            CHECK (status IN ('running', 'finished', 'stopped', 'failed')),
    -- Wall time spent running, summed over resumes (the wall-time budget counts this).
    elapsed_seconds REAL    NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at     TEXT
);

CREATE TABLE programs (
    id               INTEGER PRIMARY KEY,
    campaign_id      INTEGER NOT NULL REFERENCES campaigns (id),
    -- SHA-256 of the canonical text: the program's identity within a campaign.
    hash             TEXT    NOT NULL,
    canonical_text   TEXT    NOT NULL,
    parent_id        INTEGER REFERENCES programs (id),
    -- The other parent of a crossover.
    second_parent_id INTEGER REFERENCES programs (id),
    island           INTEGER NOT NULL,
    generation       INTEGER NOT NULL,
    -- What made it: `seed`, a structural operator, `local_llm`, `remote_llm`, `random`.
    mutator          TEXT    NOT NULL,
    -- The research stage's proposal, for LLM mutators.
    proposal         TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (campaign_id, hash)
);
CREATE INDEX programs_hash ON programs (hash);
CREATE INDEX programs_parent ON programs (parent_id);

CREATE TABLE evaluations (
    id                  INTEGER PRIMARY KEY,
    program_id          INTEGER NOT NULL REFERENCES programs (id),
    -- 0 for the first evaluation; elite confirmations use later trials.
    trial               INTEGER NOT NULL,
    task                TEXT    NOT NULL,
    passed              INTEGER NOT NULL CHECK (passed IN (0, 1)),
    stage_reached       TEXT    NOT NULL,
    score               REAL,
    -- Copies of the metrics users sort on, so that sorting can use an index.
    kl_vs_exact         REAL,
    kl_max_mean         REAL,
    speedup             REAL,
    attention_speedup   REAL,
    attn_flops_ratio    REAL,
    kv_bytes_held_ratio REAL,
    ndcg_at_10          REAL,
    metrics_json        TEXT    NOT NULL,
    descriptors_json    TEXT    NOT NULL,
    feedback            TEXT    NOT NULL,
    timings_json        TEXT    NOT NULL,
    provenance_json     TEXT    NOT NULL,
    seconds             REAL    NOT NULL,
    created_at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (program_id, trial)
);
CREATE INDEX evaluations_score ON evaluations (score);
CREATE INDEX evaluations_kl_vs_exact ON evaluations (kl_vs_exact);
CREATE INDEX evaluations_kl_max_mean ON evaluations (kl_max_mean);
CREATE INDEX evaluations_speedup ON evaluations (speedup);
CREATE INDEX evaluations_attention_speedup ON evaluations (attention_speedup);
CREATE INDEX evaluations_attn_flops_ratio ON evaluations (attn_flops_ratio);
CREATE INDEX evaluations_kv_bytes_held_ratio ON evaluations (kv_bytes_held_ratio);
CREATE INDEX evaluations_ndcg_at_10 ON evaluations (ndcg_at_10);

CREATE TABLE llm_calls (
    id                INTEGER PRIMARY KEY,
    campaign_id       INTEGER NOT NULL REFERENCES campaigns (id),
    -- The program the call worked on, once it exists.
    program_id        INTEGER REFERENCES programs (id),
    -- DeepEvolve stage: `research`, `code` or `debug`.
    stage             TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    -- Sampling settings (temperature, max tokens, seed) as JSON, for replay.
    params_json       TEXT    NOT NULL,
    prompt            TEXT    NOT NULL,
    -- NULL when the call failed; `error` says why.
    response          TEXT,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_seconds   REAL    NOT NULL,
    error             TEXT,
    created_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX llm_calls_campaign ON llm_calls (campaign_id);

-- MAP-Elites: the elite of each descriptor cell, per island.
CREATE TABLE archive_cells (
    campaign_id INTEGER NOT NULL REFERENCES campaigns (id),
    island      INTEGER NOT NULL,
    cell_key    TEXT    NOT NULL,
    program_id  INTEGER NOT NULL REFERENCES programs (id),
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (campaign_id, island, cell_key)
);

CREATE TABLE insights (
    id                INTEGER PRIMARY KEY,
    campaign_id       INTEGER NOT NULL REFERENCES campaigns (id),
    text              TEXT    NOT NULL,
    source_program_id INTEGER REFERENCES programs (id),
    created_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX insights_campaign ON insights (campaign_id);

-- The UCB bandit's statistics per mutator, so that a resumed campaign keeps what it learnt.
CREATE TABLE mutator_stats (
    campaign_id  INTEGER NOT NULL REFERENCES campaigns (id),
    mutator      TEXT    NOT NULL,
    uses         INTEGER NOT NULL DEFAULT 0,
    improvements INTEGER NOT NULL DEFAULT 0,
    reward_sum   REAL    NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, mutator)
);
