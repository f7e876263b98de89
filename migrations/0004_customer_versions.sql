-- A customer's version, bumped by every change to the profile whoever makes it (the API, an
-- import, an erase's rewrite, computed traits, the scheduler). The journey shell loads a
-- customer and plans outside the write lock; its write is fenced by the version it loaded,
-- so a change made in between (an opt-out, an erase) is never overwritten: the customer is
-- planned again from the new state.
ALTER TABLE customers ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER customers_version AFTER UPDATE OF profile ON customers
BEGIN
    UPDATE customers SET version = OLD.version + 1 WHERE id = NEW.id;
END;
