"""Everything a person reads, in English and Brazilian Portuguese.

The language is the user's (`users.language`), else the workspace default (`settings.language`),
else English. Each catalogue entry holds both languages; a test checks that no entry lacks one
and that every placeholder appears in both. A command's English help is its docstring; its pt-BR
help is the entry `help.<command name>`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bot.logs import get_logger

if TYPE_CHECKING:
    from bot.commands.registry import CommandSpec

log = get_logger("bot.platforms.i18n")

LANGUAGES = ("en", "pt-BR")
DEFAULT_LANGUAGE = "en"

CATALOGUE: Mapping[str, Mapping[str, str]] = {
    # -- access --------------------------------------------------------------------------------
    "denied.unknown": {
        "en": "Sorry, I don't know you yet. Ask an administrator to link your account.",
        "pt-BR": "Desculpe, ainda não conheço você. Peça a um administrador para vincular sua conta.",
    },
    "denied.role": {
        "en": "/{command} needs the {role} role; you don't have it.",
        "pt-BR": "/{command} exige o papel {role}; você não o tem.",
    },
    "message.use_commands": {
        "en": "Commands start with a slash. Type /help to see what I can do.",
        "pt-BR": "Os comandos começam com uma barra. Digite /help para ver o que sei fazer.",
    },
    "error.unexpected": {
        "en": "Something went wrong on my side. Reference: {reference}",
        "pt-BR": "Algo deu errado do meu lado. Referência: {reference}",
    },
    "error.expected": {
        "en": "Could not do that: {message}",
        "pt-BR": "Não foi possível fazer isso: {message}",
    },
    # -- usage ---------------------------------------------------------------------------------
    "usage.line": {"en": "Usage: {usage}", "pt-BR": "Uso: {usage}"},
    "usage.unbalanced_quotes": {
        "en": "A quote is not closed.",
        "pt-BR": "Há uma aspa sem fechamento.",
    },
    "usage.too_long": {
        "en": "That is too long (at most {limit} characters).",
        "pt-BR": "Isso é longo demais (no máximo {limit} caracteres).",
    },
    "usage.unknown_command": {
        "en": "There is no command /{name}. Type /help for the list.",
        "pt-BR": "Não existe o comando /{name}. Digite /help para ver a lista.",
    },
    "usage.pick_subcommand": {
        "en": "/{name} needs one of: {choices}.",
        "pt-BR": "/{name} precisa de um destes: {choices}.",
    },
    "usage.unknown_option": {"en": "Unknown option {option}.", "pt-BR": "Opção desconhecida {option}."},
    "usage.option_needs_value": {
        "en": "Option {option} needs a value.",
        "pt-BR": "A opção {option} precisa de um valor.",
    },
    "usage.too_many": {
        "en": "Too many arguments (from “{extra}”).",
        "pt-BR": "Argumentos demais (a partir de “{extra}”).",
    },
    "usage.missing": {"en": "Missing {param}.", "pt-BR": "Falta {param}."},
    "usage.value_too_long": {
        "en": "{param} is too long (at most {limit} characters).",
        "pt-BR": "{param} é longo demais (no máximo {limit} caracteres).",
    },
    "usage.not_a_number": {
        "en": "{param} must be a whole number, not “{value}”.",
        "pt-BR": "{param} deve ser um número inteiro, não “{value}”.",
    },
    "usage.too_small": {
        "en": "{param} must be at least {minimum}.",
        "pt-BR": "{param} deve ser no mínimo {minimum}.",
    },
    "usage.too_large": {
        "en": "{param} must be at most {maximum}.",
        "pt-BR": "{param} deve ser no máximo {maximum}.",
    },
    "usage.bad_choice": {
        "en": "{param} must be one of: {choices}.",
        "pt-BR": "{param} deve ser um destes: {choices}.",
    },
    # -- common --------------------------------------------------------------------------------
    "common.on": {"en": "yes", "pt-BR": "sim"},
    "common.off": {"en": "no", "pt-BR": "não"},
    "stream.overflow": {
        "en": "\n… (continued in the attached file)",
        "pt-BR": "\n… (continua no arquivo anexo)",
    },
    # -- /help ---------------------------------------------------------------------------------
    "help.header": {
        "en": "Commands you can use (role: {role}):",
        "pt-BR": "Comandos que você pode usar (papel: {role}):",
    },
    "help.footer": {
        "en": "Type /help <command> for details.",
        "pt-BR": "Digite /help <comando> para detalhes.",
    },
    "help.no_such_command": {
        "en": "There is no command /{name}.",
        "pt-BR": "Não existe o comando /{name}.",
    },
    "help.required_role": {"en": "Requires: {role}", "pt-BR": "Exige: {role}"},
    # -- /status -------------------------------------------------------------------------------
    "status.title": {"en": "Orchestrator status", "pt-BR": "Estado do orquestrador"},
    "status.tasks": {"en": "Active tasks", "pt-BR": "Tarefas ativas"},
    "status.subtasks": {"en": "Active subtasks", "pt-BR": "Subtarefas ativas"},
    "status.models_loaded": {"en": "Models loaded ({count})", "pt-BR": "Modelos carregados ({count})"},
    "status.none": {"en": "none", "pt-BR": "nenhuma"},
    "status.machine": {"en": "Machine", "pt-BR": "Máquina"},
    "status.machine_line": {
        "en": "CPU {cpu}% · RAM {ram}% of {ram_total} · disk {disk}% ({disk_free} free)",
        "pt-BR": "CPU {cpu}% · RAM {ram}% de {ram_total} · disco {disk}% ({disk_free} livres)",
    },
    "status.uptime": {"en": "Up for", "pt-BR": "No ar há"},
    # -- /providers ----------------------------------------------------------------------------
    "providers.none": {"en": "No LLM servers are configured.", "pt-BR": "Nenhum servidor de LLM configurado."},
    "providers.title": {"en": "LLM servers ({count}):", "pt-BR": "Servidores de LLM ({count}):"},
    "providers.col.name": {"en": "name", "pt-BR": "nome"},
    "providers.col.kind": {"en": "kind", "pt-BR": "tipo"},
    "providers.col.url": {"en": "address", "pt-BR": "endereço"},
    "providers.col.enabled": {"en": "on", "pt-BR": "ativo"},
    "providers.col.health": {"en": "health", "pt-BR": "saúde"},
    "providers.col.models": {"en": "models", "pt-BR": "modelos"},
    "providers.col.checked": {"en": "checked", "pt-BR": "verificado"},
    "providers.test_ok": {
        "en": "{name} answers in {latency} ms and offers {models} model(s), {loaded} loaded.",
        "pt-BR": "{name} responde em {latency} ms e oferece {models} modelo(s), {loaded} carregado(s).",
    },
    "providers.test_down": {
        "en": "{name} does not answer: {detail}",
        "pt-BR": "{name} não responde: {detail}",
    },
    # -- /models -------------------------------------------------------------------------------
    "models.none": {"en": "No models known yet.", "pt-BR": "Nenhum modelo conhecido ainda."},
    "models.title": {"en": "Models ({count}):", "pt-BR": "Modelos ({count}):"},
    "models.loaded": {"en": "loaded", "pt-BR": "carregado"},
    "models.col.model": {"en": "model", "pt-BR": "modelo"},
    "models.col.provider": {"en": "server", "pt-BR": "servidor"},
    "models.col.state": {"en": "state", "pt-BR": "estado"},
    "models.col.size": {"en": "size", "pt-BR": "tamanho"},
    "models.col.quant": {"en": "quant", "pt-BR": "quant"},
    "models.col.context": {"en": "context", "pt-BR": "contexto"},
    "models.not_found": {
        "en": "No server offers a model named “{model}”. Try /models list.",
        "pt-BR": "Nenhum servidor oferece um modelo chamado “{model}”. Tente /models list.",
    },
    "models.ambiguous": {
        "en": "Several servers offer “{model}” ({providers}); add --provider <name>.",
        "pt-BR": "Vários servidores oferecem “{model}” ({providers}); adicione --provider <nome>.",
    },
    "models.loaded_ok": {
        "en": "Loaded {model} on {provider} (instance {instance}) in {seconds} s.",
        "pt-BR": "{model} carregado em {provider} (instância {instance}) em {seconds} s.",
    },
    "models.unloaded_ok": {"en": "Unloaded {model} from {provider}.", "pt-BR": "{model} descarregado de {provider}."},
    "models.no_recommendation": {
        "en": "No available model suits “{task}”.",
        "pt-BR": "Nenhum modelo disponível serve para “{task}”.",
    },
    "models.recommend_title": {"en": "Best models for {task}:", "pt-BR": "Melhores modelos para {task}:"},
    "models.download_started": {
        "en": "Downloading {model} on {provider}…",
        "pt-BR": "Baixando {model} em {provider}…",
    },
    "models.download_done": {"en": "Downloaded {model} on {provider}.", "pt-BR": "{model} baixado em {provider}."},
    # -- /ais ----------------------------------------------------------------------------------
    "ais.none": {"en": "No specialised AIs are defined.", "pt-BR": "Nenhuma IA especializada definida."},
    "ais.title": {"en": "Specialised AIs ({count}):", "pt-BR": "IAs especializadas ({count}):"},
    "ais.auto": {"en": "(chosen by ranking)", "pt-BR": "(escolhido pelo ranking)"},
    "ais.col.name": {"en": "name", "pt-BR": "nome"},
    "ais.col.role": {"en": "role", "pt-BR": "papel"},
    "ais.col.category": {"en": "category", "pt-BR": "categoria"},
    "ais.col.model": {"en": "model", "pt-BR": "modelo"},
    "ais.col.active": {"en": "active", "pt-BR": "ativa"},
    # -- /templates ----------------------------------------------------------------------------
    "templates.none": {"en": "No templates yet.", "pt-BR": "Ainda não há modelos de prompt."},
    "templates.title": {"en": "Prompt templates ({count}):", "pt-BR": "Modelos de prompt ({count}):"},
    "templates.not_found": {"en": "No template named “{name}”.", "pt-BR": "Nenhum modelo chamado “{name}”."},
    "templates.show": {
        "en": "*{name}* ({category})\n{description}\nVariables: {variables}\n```\n{body}\n```",
        "pt-BR": "*{name}* ({category})\n{description}\nVariáveis: {variables}\n```\n{body}\n```",
    },
    # -- /instructions -------------------------------------------------------------------------
    "instructions.none": {"en": "No standing instructions.", "pt-BR": "Nenhuma instrução permanente."},
    "instructions.title": {
        "en": "Standing instructions ({count}):",
        "pt-BR": "Instruções permanentes ({count}):",
    },
    "instructions.added": {"en": "Instruction #{id} added.", "pt-BR": "Instrução #{id} adicionada."},
    "instructions.removed": {"en": "Instruction #{id} switched off.", "pt-BR": "Instrução #{id} desativada."},
    "instructions.not_found": {
        "en": "There is no active instruction #{id}.",
        "pt-BR": "Não há instrução ativa #{id}.",
    },
    # -- /kb -----------------------------------------------------------------------------------
    "kb.query_too_short": {
        "en": "Search for at least one word of two letters or more.",
        "pt-BR": "Pesquise ao menos uma palavra com duas letras ou mais.",
    },
    "kb.no_results": {"en": "Nothing found for “{query}”.", "pt-BR": "Nada encontrado para “{query}”."},
    "kb.results": {
        "en": "{count} result(s) for “{query}”:",
        "pt-BR": "{count} resultado(s) para “{query}”:",
    },
    "kb.added": {"en": "Added #{id} “{title}”.", "pt-BR": "Adicionado #{id} “{title}”."},
    "kb.duplicate": {
        "en": "That content is already in the knowledge base as #{id}.",
        "pt-BR": "Esse conteúdo já está na base de conhecimento como #{id}.",
    },
    # -- /logs ---------------------------------------------------------------------------------
    "logs.none": {"en": "No log entries match.", "pt-BR": "Nenhum registro corresponde."},
    "logs.title": {"en": "Latest {count} log entries:", "pt-BR": "Últimos {count} registros:"},
    "logs.col.at": {"en": "at (UTC)", "pt-BR": "quando (UTC)"},
    "logs.col.level": {"en": "level", "pt-BR": "nível"},
    "logs.col.event": {"en": "event", "pt-BR": "evento"},
    "logs.col.task": {"en": "task/sub", "pt-BR": "tarefa/sub"},
    "logs.col.model": {"en": "model", "pt-BR": "modelo"},
    "logs.col.latency": {"en": "latency", "pt-BR": "latência"},
    # -- /ranking ------------------------------------------------------------------------------
    "ranking.none": {
        "en": "No model has a track record yet.",
        "pt-BR": "Nenhum modelo tem histórico ainda.",
    },
    "ranking.title": {"en": "Model ranking:", "pt-BR": "Ranking de modelos:"},
    "ranking.col.category": {"en": "category", "pt-BR": "categoria"},
    "ranking.col.rank": {"en": "#", "pt-BR": "#"},
    "ranking.col.model": {"en": "model", "pt-BR": "modelo"},
    "ranking.col.runs": {"en": "runs", "pt-BR": "execuções"},
    "ranking.col.success": {"en": "success", "pt-BR": "sucesso"},
    "ranking.col.score": {"en": "score", "pt-BR": "nota"},
    "ranking.col.time": {"en": "mean time", "pt-BR": "tempo médio"},
    # -- /alerts -------------------------------------------------------------------------------
    "alerts.none": {"en": "No open alerts.", "pt-BR": "Nenhum alerta aberto."},
    "alerts.title": {"en": "Open alerts ({count}):", "pt-BR": "Alertas abertos ({count}):"},
    "alerts.acknowledged": {"en": "(acknowledged)", "pt-BR": "(reconhecido)"},
    "alerts.acked": {"en": "Alert #{id} acknowledged.", "pt-BR": "Alerta #{id} reconhecido."},
    "alerts.not_found": {"en": "There is no open alert #{id}.", "pt-BR": "Não há alerta aberto #{id}."},
    "alert.raised": {"en": "{severity} alert: {message}", "pt-BR": "Alerta {severity}: {message}"},
    "alert.resolved": {"en": "Resolved: {message}", "pt-BR": "Resolvido: {message}"},
    "alert.severity.info": {"en": "Info", "pt-BR": "Informativo"},
    "alert.severity.warning": {"en": "Warning", "pt-BR": "Atenção"},
    "alert.severity.critical": {"en": "Critical", "pt-BR": "Crítico"},
    # -- /accounts -----------------------------------------------------------------------------
    "accounts.none": {"en": "No paid API accounts.", "pt-BR": "Nenhuma conta de API paga."},
    "accounts.title": {"en": "API accounts ({count}):", "pt-BR": "Contas de API ({count}):"},
    "accounts.sync_failed": {"en": "sync failed", "pt-BR": "falha na sincronização"},
    "accounts.col.service": {"en": "service", "pt-BR": "serviço"},
    "accounts.col.account": {"en": "account", "pt-BR": "conta"},
    "accounts.col.owner": {"en": "owner", "pt-BR": "dono"},
    "accounts.col.credits": {"en": "credits", "pt-BR": "créditos"},
    "accounts.col.synced": {"en": "synced", "pt-BR": "sincronizado"},
    "accounts.col.state": {"en": "state", "pt-BR": "estado"},
    # -- console -------------------------------------------------------------------------------
    # -- tasks -----------------------------------------------------------------------------------
    "task.created": {"en": "Task #{id} queued: {title}", "pt-BR": "Tarefa #{id} na fila: {title}"},
    "task.plan": {"en": "Plan by {planner}:\n{steps}", "pt-BR": "Plano de {planner}:\n{steps}"},
    "task.verdict": {
        "en": "Checked by {validator}: score {score}, {decision}, divergence {divergence}%",
        "pt-BR": "Verificado por {validator}: nota {score}, {decision}, divergência {divergence}%",
    },
    "task.tie_waiting": {
        "en": "The models disagreed and the tie-break was inconclusive: a person must choose below.",
        "pt-BR": "Os modelos discordaram e o desempate foi inconclusivo: uma pessoa precisa escolher abaixo.",
    },
    "task.reattached": {
        "en": "The orchestrator restarted; this thread keeps following task #{id}.",
        "pt-BR": "O orquestrador reiniciou; esta conversa continua acompanhando a tarefa #{id}.",
    },
    # -- follow-ups in a task's thread -------------------------------------------------------------
    "followup.denied": {
        "en": "Follow-ups in a task's thread need the operator role; you are {role}.",
        "pt-BR": "Continuar a conversa de uma tarefa exige o papel operator; você é {role}.",
    },
    "followup.too_long": {
        "en": "Your message has {length} characters; a follow-up may have at most {limit}. Shorten it, "
        "or start a new /task.",
        "pt-BR": "Sua mensagem tem {length} caracteres; uma continuação pode ter no máximo {limit}. "
        "Encurte-a ou comece uma nova /task.",
    },
    "followup.task_running": {
        "en": "Task #{id} has no final answer yet; ask again once it is done.",
        "pt-BR": "A tarefa #{id} ainda não tem resposta final; pergunte de novo quando ela terminar.",
    },
    "followup.no_thread": {
        "en": "Task #{id} has no thread here to continue (it was not started from this chat).",
        "pt-BR": "A tarefa #{id} não tem uma conversa aqui para continuar (não foi iniciada neste chat).",
    },
    # -- disputes ------------------------------------------------------------------------------------
    "dispute.title": {
        "en": "Step {seq} disputed: {title}",
        "pt-BR": "Etapa {seq} em disputa: {title}",
    },
    "dispute.decided_by_judge": {
        "en": "The models disagreed (divergence {divergence}%); the tie-break chose: {outcome}.",
        "pt-BR": "Os modelos discordaram (divergência {divergence}%); o desempate escolheu: {outcome}.",
    },
    "dispute.executor": {"en": "Executor ({model})", "pt-BR": "Executor ({model})"},
    "dispute.validator": {"en": "Validator ({model})", "pt-BR": "Validador ({model})"},
    "dispute.accept_executor": {"en": "Keep the executor's answer", "pt-BR": "Manter a resposta do executor"},
    "dispute.accept_validator": {"en": "Keep the validator's answer", "pt-BR": "Manter a resposta do validador"},
    "dispute.rerun": {"en": "Re-run the tie-break", "pt-BR": "Refazer o desempate"},
    "dispute.choice.executor": {"en": "the executor's answer", "pt-BR": "a resposta do executor"},
    "dispute.choice.validator": {"en": "the validator's answer", "pt-BR": "a resposta do validador"},
    "dispute.choice.rerun": {"en": "run the tie-break again", "pt-BR": "refazer o desempate"},
    "dispute.choice.tie": {"en": "no winner", "pt-BR": "nenhum vencedor"},
    "dispute.decided": {"en": "{who} chose {choice}.", "pt-BR": "{who} escolheu {choice}."},
    "dispute.already": {
        "en": "This dispute was already resolved: {who} chose {choice}.",
        "pt-BR": "Esta disputa já foi resolvida: {who} escolheu {choice}.",
    },
    "dispute.gone": {
        "en": "This dispute is no longer open.",
        "pt-BR": "Esta disputa não está mais aberta.",
    },
    "dispute.denied": {
        "en": "Only operators and admins can settle a dispute; you are {role}.",
        "pt-BR": "Só operators e admins podem resolver uma disputa; você é {role}.",
    },
    "task.unvalidated": {
        "en": "Not validated: no second model was available to check this answer.",
        "pt-BR": "Não validado: não havia um segundo modelo para verificar esta resposta.",
    },
    "task.suspect": {
        "en": "Possible hallucination (confidence {confidence}/100):{reasons}\n{next}",
        "pt-BR": "Possível alucinação (confiança {confidence}/100):{reasons}\n{next}",
    },
    "task.suspect.recovery": {
        "en": "Asking a different model to answer the same request.",
        "pt-BR": "Pedindo a outro modelo que responda à mesma solicitação.",
    },
    "task.suspect.tiebreak": {
        "en": "The validator disagreed too; a third model will judge.",
        "pt-BR": "O validador também discordou; um terceiro modelo vai julgar.",
    },
    "task.suspect.none": {
        "en": "No other model is available to check it: treat this answer with care.",
        "pt-BR": "Não há outro modelo disponível para verificá-la: trate esta resposta com cuidado.",
    },
    "task.recovered.retry": {
        "en": "Kept {model}'s answer instead (confidence {retry} against {original}).",
        "pt-BR": "Mantida a resposta de {model} (confiança {retry} contra {original}).",
    },
    "task.recovered.original": {
        "en": "{model}'s answer scored no better ({retry} against {original}); the first answer stays, marked suspect.",
        "pt-BR": "A resposta de {model} não foi melhor ({retry} contra {original}); a primeira fica, marcada "
        "como suspeita.",
    },
    "task.stopped": {
        "en": "Generation stopped early: {reason}",
        "pt-BR": "Geração interrompida: {reason}",
    },
    "task.final": {"en": "Final answer:", "pt-BR": "Resposta final:"},
    "task.ended": {"en": "Task #{id} ended: {reason}", "pt-BR": "Tarefa #{id} terminou: {reason}"},
    "engine.not_running": {
        "en": "The engine does not run in this process; use the daemon or `orchestrator chat`.",
        "pt-BR": "O motor não roda neste processo; use o daemon ou `orchestrator chat`.",
    },
    "tasks.none": {"en": "No tasks yet.", "pt-BR": "Nenhuma tarefa ainda."},
    "tasks.not_found": {"en": "There is no task #{id}.", "pt-BR": "Não existe a tarefa #{id}."},
    "tasks.cancelled": {"en": "Task #{id} cancelled.", "pt-BR": "Tarefa #{id} cancelada."},
    "tasks.already_ended": {"en": "Task #{id} had already ended.", "pt-BR": "A tarefa #{id} já tinha terminado."},
    "console.welcome": {
        "en": "Orchestrator console — signed in as {username} ({role}). /help lists commands, /quit leaves.",
        "pt-BR": "Console do orquestrador — conectado como {username} ({role}). /help lista os comandos, /quit sai.",
    },
    "console.attached": {"en": "[file {filename} saved to {path}]", "pt-BR": "[arquivo {filename} salvo em {path}]"},
    "console.choose_hint": {
        "en": "Type `choose <number>` to pick one.",
        "pt-BR": "Digite `choose <número>` para escolher.",
    },
    "console.no_choice": {
        "en": "“{line}” is not an open choice; the numbers are shown under the card.",
        "pt-BR": "“{line}” não é uma opção aberta; os números aparecem abaixo do cartão.",
    },
    # -- /workflows ----------------------------------------------------------------------------
    "workflows.none": {"en": "No workflows yet.", "pt-BR": "Ainda não há fluxos de trabalho."},
    "workflows.title": {"en": "Workflows ({count}):", "pt-BR": "Fluxos de trabalho ({count}):"},
    "workflows.steps": {"en": "{count} step(s)", "pt-BR": "{count} etapa(s)"},
    "workflows.off": {"en": "(switched off)", "pt-BR": "(desativado)"},
    "workflows.not_found": {"en": "There is no workflow #{id}.", "pt-BR": "Não existe o fluxo de trabalho #{id}."},
    "workflows.by_template": {"en": "template {name}", "pt-BR": "modelo {name}"},
    "workflows.by_ai": {"en": "AI {name}", "pt-BR": "IA {name}"},
    "workflows.after": {"en": "after {steps}", "pt-BR": "depois de {steps}"},
    "workflows.expected": {"en": "Expected: {text}", "pt-BR": "Esperado: {text}"},
    "workflows.run_hint": {
        "en": "Run it: /workflows run {id} [input…]",
        "pt-BR": "Para executar: /workflows run {id} [entrada…]",
    },
    "workflows.cannot_run": {
        "en": "This workflow cannot run: {reason}",
        "pt-BR": "Este fluxo de trabalho não pode ser executado: {reason}",
    },
    # -- /connect ------------------------------------------------------------------------------
    "connect.secret_refused": {
        "en": "That looks like a key or token. Never paste secrets in chat: I did not keep it or repeat it. "
        "Revoke it at the service if others could see it, and store keys through the admin API.",
        "pt-BR": "Isso parece uma chave ou token. Nunca cole segredos no chat: não guardei nem repeti. "
        "Revogue-o no serviço se outras pessoas puderem ter visto, e guarde chaves pela API de administração.",
    },
    "connect.bad_service": {
        "en": "Name the service in lowercase letters, digits, “-”, “_” or “.” (e.g. github).",
        "pt-BR": "Informe o serviço em letras minúsculas, dígitos, “-”, “_” ou “.” (ex.: github).",
    },
    "connect.unknown_service": {
        "en": "There is no service “{service}”. Known: {services}.",
        "pt-BR": "Não existe o serviço “{service}”. Conhecidos: {services}.",
    },
    "connect.not_linked": {
        "en": "Your chat account is not linked to a user, so there is nothing to connect to. Ask an administrator.",
        "pt-BR": "Sua conta de chat não está vinculada a um usuário; não há a que conectar. Peça a um administrador.",
    },
    "connect.no_vault": {
        "en": "Secrets cannot be stored in this process (no vault); use the daemon.",
        "pt-BR": "Segredos não podem ser guardados neste processo (sem cofre); use o daemon.",
    },
    "connect.api_key": {
        "en": "{display} uses an API key, which must never go through chat. Store it with the admin API: "
        "POST {base}/credentials with {{\"name\": \"…\", \"service\": \"{service}\", \"secret\": {{…}}}} "
        "(fields: {fields}), e.g. with curl and your API token.",
        "pt-BR": "{display} usa uma chave de API, que nunca deve passar pelo chat. Guarde-a pela API de "
        "administração: POST {base}/credentials com {{\"name\": \"…\", \"service\": \"{service}\", "
        "\"secret\": {{…}}}} (campos: {fields}), por exemplo com curl e o seu token da API.",
    },
    "connect.docs": {"en": "How to get one: {url}", "pt-BR": "Como obter: {url}"},
    "connect.needs_client": {
        "en": "To connect {service}, first store its OAuth client (client_id and client_secret) as your credential: "
        "POST {base}/credentials with {{\"name\": \"…\", \"service\": \"{service}\", \"secret\": {{\"client_id\": …, "
        "\"client_secret\": …}}}}. Register {callback} as the redirect URL with the provider. Then run "
        "/connect {service} again.",
        "pt-BR": "Para conectar {service}, guarde antes o cliente OAuth (client_id e client_secret) como sua "
        "credencial: POST {base}/credentials com {{\"name\": \"…\", \"service\": \"{service}\", "
        "\"secret\": {{\"client_id\": "
        "…, \"client_secret\": …}}}}. Registre {callback} como URL de redirecionamento no provedor. Depois "
        "execute /connect {service} de novo.",
    },
    "connect.not_usable": {
        "en": "Your {service} credential cannot be authorised: {reason}",
        "pt-BR": "Sua credencial de {service} não pode ser autorizada: {reason}",
    },
    "connect.sent": {
        "en": "I sent you a private link to connect {service}.",
        "pt-BR": "Enviei a você um link privado para conectar {service}.",
    },
    "connect.link": {
        "en": "Open this link to connect {service} (only you can see it; it works once, for {minutes} min): {link}",
        "pt-BR": "Abra este link para conectar {service} (só você o vê; funciona uma vez, por {minutes} min): {link}",
    },
    "connect.done": {
        "en": "{service} is connected (credential “{credential}”).",
        "pt-BR": "{service} está conectado (credencial “{credential}”).",
    },
    "connect.failed": {
        "en": "Connecting {service} did not work: {reason}",
        "pt-BR": "A conexão com {service} não funcionou: {reason}",
    },
    "help.workflows list": {
        "pt-BR": "Lista os fluxos de trabalho: número, nome, versão e quantas etapas cada um tem.",
    },
    "help.workflows show": {
        "pt-BR": "Mostra as etapas de um fluxo de trabalho: quem faz cada uma, do que depende e o que deve produzir.",
    },
    "help.workflows run": {
        "pt-BR": "Executa um fluxo de trabalho como tarefa com a sua entrada; etapas, verificações e resposta "
        "vão para o tópico da tarefa.",
    },
    "help.connect": {
        "pt-BR": "Conecta uma conta externa (GitHub, Google…): você recebe um link privado para autorizá-la.",
    },
    # -- pt-BR help of each command (English help is the handler's docstring) -------------------
    "help.help": {
        "pt-BR": "Lista os comandos que você pode usar, ou explica um: /help [comando].",
    },
    "help.status": {
        "pt-BR": "Mostra a fila de trabalho, os modelos carregados e a CPU, memória e disco da máquina.",
    },
    "help.providers list": {
        "pt-BR": "Lista os servidores de LLM: tipo, endereço, saúde e quantos modelos cada um oferece.",
    },
    "help.providers test": {
        "pt-BR": "Verifica se um servidor de LLM responde, com que rapidez, e quantos modelos oferece.",
    },
    "help.ais": {
        "pt-BR": "Lista as IAs especializadas (planejador, programador, revisor…) e o modelo que cada uma prefere.",
    },
    "help.templates": {
        "pt-BR": "Lista os modelos de prompt, ou mostra um com suas variáveis: /templates [nome].",
    },
    "help.instructions list": {
        "pt-BR": "Lista as instruções permanentes adicionadas aos prompts, da maior prioridade para a menor.",
    },
    "help.instructions add": {
        "pt-BR": "Adiciona uma instrução permanente a todos os prompts, ou a uma categoria com --category.",
    },
    "help.instructions remove": {
        "pt-BR": "Desativa uma instrução permanente pelo número (ela continua no histórico).",
    },
    "help.kb search": {
        "pt-BR": "Pesquisa a base de conhecimento por palavras nos títulos e no conteúdo: /kb search <palavras…>.",
    },
    "help.kb add": {
        "pt-BR": 'Adiciona um documento à base de conhecimento: /kb add "<título>" <conteúdo…>.',
    },
    "help.logs": {
        "pt-BR": "Mostra os registros de execução mais recentes: /logs [--task N] [--level error] [--limit 10].",
    },
    "help.ranking": {
        "pt-BR": "Classifica os modelos pelo histórico, geral ou em uma categoria: /ranking [categoria].",
    },
    "help.alerts list": {
        "pt-BR": "Lista os alertas abertos e reconhecidos, os mais graves primeiro.",
    },
    "help.alerts ack": {
        "pt-BR": "Reconhece um alerta para que pare de notificar (ele se resolve quando a condição passa).",
    },
    "help.accounts": {
        "pt-BR": "Lista as contas de APIs pagas e seus créditos restantes (administradores veem as de todos).",
    },
    "help.models list": {
        "pt-BR": "Lista os modelos de cada servidor, carregados primeiro: /models list [--provider nome].",
    },
    "help.models load": {
        "pt-BR": "Carrega um modelo na memória: /models load <modelo> [--provider nome].",
    },
    "help.models unload": {
        "pt-BR": "Descarrega um modelo da memória: /models unload <modelo> [--provider nome].",
    },
    "help.models recommend": {
        "pt-BR": "Recomenda modelos para um tipo de tarefa (code, chat, reasoning…): /models recommend <tarefa>.",
    },
    "help.models download": {
        "pt-BR": "Baixa um modelo com barra de progresso: /models download <modelo> [--provider nome].",
    },
}


def normalise_language(value: str | None) -> str:
    """Map "pt", "pt_BR", "pt-br" to "pt-BR"; anything else unknown to English."""
    if not value:
        return DEFAULT_LANGUAGE
    lowered = value.replace("_", "-").lower()
    if lowered.startswith("pt"):
        return "pt-BR"
    return DEFAULT_LANGUAGE


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def translate(key: str, language: str | None, /, **params: Any) -> str:
    """The catalogue text for `key` in `language` (English when missing), placeholders filled."""
    entry = CATALOGUE.get(key)
    if entry is None:
        log.warning("missing catalogue entry", key=key)
        return key
    lang = normalise_language(language)
    template = entry.get(lang) or entry.get(DEFAULT_LANGUAGE) or next(iter(entry.values()))
    return template.format_map(_Missing({k: v for k, v in params.items()}))


def help_text(spec: CommandSpec, language: str | None) -> str:
    """A command's one-line help in the person's language (docstring in English)."""
    if normalise_language(language) != DEFAULT_LANGUAGE:
        entry = CATALOGUE.get(f"help.{spec.name}")
        if entry and normalise_language(language) in entry:
            return entry[normalise_language(language)]
    return spec.summary


def placeholders(template: str) -> set[str]:
    """The `{names}` a template uses (for the catalogue consistency test)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}
