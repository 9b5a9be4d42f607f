"""Non-voice tasks (chat, SMS, e-mail, web callback) in the ACD's queues, over MQTT.

```
 web / SMS gateway / mail --acd/task/submit--> schema.parse_submission --> Router.submit_task
                          <--acd/task/reply/<id>-- (ok, or the reason; nothing half-queued)
 Router (matcher) --TaskSink.offer--> TaskService --agent/<id>/task (QoS 1)--> agent desktop
 agent desktop --agent/<id>/task/reply {accept|reject|done}--> Router.task_accepted/...
 callback: TaskService --AmiCallbackDialer--> Originate agent phone, then the customer
```

`schema` is pure (validation and masking), `service` is the router's `TaskSink` and the MQTT
side, `callback` rings agents for web callbacks over AMI. `task_extension` and
`task_keep_extension` (the tasks across a restart, `keep`) are what
`ivr_engine.acd_extensions.EXTENSIONS` lists. The payloads are documented in docs/tasks.md.
"""

from ivr_engine.tasks.schema import TaskRejected, TaskRequest, parse_submission
from ivr_engine.tasks.service import TaskService, task_extension, task_keep_extension

__all__ = [
    "TaskRejected",
    "TaskRequest",
    "TaskService",
    "parse_submission",
    "task_extension",
    "task_keep_extension",
]
