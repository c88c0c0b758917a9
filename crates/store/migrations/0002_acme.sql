-- Certificates obtained by ACME (and the ACME account), shared by every node of the store,
-- with a lease so that one node orders a certificate while the others wait for it.
CREATE TABLE acme (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    holder TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
