-- Every committed change is a revision: the whole config after it, and the audit record of
-- the change that made it (who, when, what, before/after). Ids are assigned by the writer as
-- parent + 1, so two writers racing from the same parent cannot both commit.
CREATE TABLE revisions (
    id BIGINT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    author TEXT NOT NULL,
    message TEXT NOT NULL,
    action TEXT NOT NULL,
    entity TEXT NOT NULL,
    before_json TEXT,
    after_json TEXT,
    config TEXT NOT NULL
);
