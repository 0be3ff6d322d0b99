-- The seed's own spec as given (fc_ex_cp's `POST /vms` and `desired_vms.exs`), JSON text,
-- kept verbatim beside Lapse's spec for the seed's views. NULL for everything else.
ALTER TABLE environments ADD COLUMN seed_spec TEXT;
