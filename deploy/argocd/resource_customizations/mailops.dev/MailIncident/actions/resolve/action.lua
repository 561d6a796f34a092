-- Ends the incident: its targets go back to normal service, the object stays as the
-- record of what happened.
obj.spec.resolved = true
return obj
