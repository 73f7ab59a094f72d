"""The training engine, whatever the task: typed options (``options``), the process set-up
(``runtime``), the one fit loop (``fit``), the one LightningModule and data module (``module``),
training data parts and batching (``data``), the batched-inference loop (``inference``), the
on-disk cache store (``store``) and the model-directory format (``checkpoint``).

The engine never imports a task: a task (``structkd.tasks``) prepares a ``fit.PreparedRun`` with
its ``protocol.TrainingHooks`` and the engine runs it. Importing this package is cheap (no torch):
import the modules you use.
"""
