-- The directory a campaign's config was read from, so that a resume (which needs no file)
-- can still resolve what the config names relative to it: a command task's scripts.
ALTER TABLE campaigns ADD COLUMN config_dir TEXT;
