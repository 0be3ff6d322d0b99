-- A pool's claim hook (`lapse_core::claim::ClaimHook` as JSON): how a claim's parameters
-- reach a member. NULL: the pool takes no parameters.
ALTER TABLE pools ADD COLUMN on_claim TEXT;
