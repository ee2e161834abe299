"""The applications: the command line (`cli`, python -m lposs), the local web app (`webapp` the page,
`webapp_backend` one click, `webapp_models` the model choices), the three modes of one image side by side
(`side_by_side`), and what the CLI and the page share (`label_maps`)."""
