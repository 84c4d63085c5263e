"""Everything that knows Ray: participant actors, the driver actor, and how they are placed.
Thin over fedgrow_ray/, which never imports ray."""
