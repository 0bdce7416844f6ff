// The widget's texts in English, Spanish and French, and the choice of language from the
// browser's preferences, the tenant's offered languages and an explicit override.

export type Lang = "en" | "es" | "fr";

const en = {
  openChat: "Open chat",
  minimise: "Minimise chat",
  chatWindow: "Chat",
  greeting: "Hi! How can we help?",
  messages: "Messages",
  inputLabel: "Type your message",
  inputPlaceholder: "Write a message…",
  send: "Send",
  you: "You",
  agent: "Agent",
  system: "Support",
  anAgent: "An agent",
  queue: "You are number {n} in the queue.",
  wait: "Estimated wait: {t}.",
  lessThanMinute: "less than a minute",
  minutes: "about {n} min",
  waiting: "Waiting for an agent…",
  joined: "{name} joined the chat.",
  typing: "{name} is typing…",
  reconnecting: "Connection lost. Reconnecting…",
  restored: "Connection restored.",
  ended: "The chat has ended.",
  endChat: "End chat",
  newChat: "Start a new chat",
  rateQuestion: "How was your chat?",
  rateScore: "{n} of 5",
  comment: "Comment (optional)",
  sendRating: "Send rating",
  thanksRating: "Thank you for your feedback!",
  offlineTitle: "We're away right now",
  offlineText: "Leave a message and your email address, and we will get back to you.",
  name: "Name",
  email: "Email",
  message: "Message",
  sendOffline: "Send message",
  offlineSent: "Thanks! We got your message and will answer here or by email.",
  emailInvalid: "Please enter a valid email address.",
  messageRequired: "Please write a message.",
  notAllowed: "Chat is not available on this website.",
  rateLimited: "Too many requests. Please try again in {n} seconds.",
  error: "Something went wrong. Please try again.",
  unread: "{n} unread messages",
};

export type Texts = typeof en;

const es: Texts = {
  openChat: "Abrir chat",
  minimise: "Minimizar chat",
  chatWindow: "Chat",
  greeting: "¡Hola! ¿En qué podemos ayudarte?",
  messages: "Mensajes",
  inputLabel: "Escribe tu mensaje",
  inputPlaceholder: "Escribe un mensaje…",
  send: "Enviar",
  you: "Tú",
  agent: "Agente",
  system: "Soporte",
  anAgent: "Un agente",
  queue: "Eres el número {n} en la cola.",
  wait: "Espera estimada: {t}.",
  lessThanMinute: "menos de un minuto",
  minutes: "unos {n} min",
  waiting: "Esperando a un agente…",
  joined: "{name} se ha unido al chat.",
  typing: "{name} está escribiendo…",
  reconnecting: "Conexión perdida. Reconectando…",
  restored: "Conexión restablecida.",
  ended: "El chat ha terminado.",
  endChat: "Terminar chat",
  newChat: "Iniciar un chat nuevo",
  rateQuestion: "¿Qué tal ha ido el chat?",
  rateScore: "{n} de 5",
  comment: "Comentario (opcional)",
  sendRating: "Enviar valoración",
  thanksRating: "¡Gracias por tu opinión!",
  offlineTitle: "Ahora no estamos disponibles",
  offlineText: "Déjanos un mensaje y tu correo electrónico y te responderemos.",
  name: "Nombre",
  email: "Correo electrónico",
  message: "Mensaje",
  sendOffline: "Enviar mensaje",
  offlineSent: "¡Gracias! Hemos recibido tu mensaje y te responderemos aquí o por correo.",
  emailInvalid: "Introduce un correo electrónico válido.",
  messageRequired: "Escribe un mensaje.",
  notAllowed: "El chat no está disponible en este sitio web.",
  rateLimited: "Demasiadas solicitudes. Inténtalo de nuevo en {n} segundos.",
  error: "Algo ha salido mal. Inténtalo de nuevo.",
  unread: "{n} mensajes sin leer",
};

const fr: Texts = {
  openChat: "Ouvrir le chat",
  minimise: "Réduire le chat",
  chatWindow: "Chat",
  greeting: "Bonjour ! Comment pouvons-nous vous aider ?",
  messages: "Messages",
  inputLabel: "Écrivez votre message",
  inputPlaceholder: "Écrire un message…",
  send: "Envoyer",
  you: "Vous",
  agent: "Agent",
  system: "Assistance",
  anAgent: "Un agent",
  queue: "Vous êtes numéro {n} dans la file d'attente.",
  wait: "Attente estimée : {t}.",
  lessThanMinute: "moins d'une minute",
  minutes: "environ {n} min",
  waiting: "En attente d'un agent…",
  joined: "{name} a rejoint la conversation.",
  typing: "{name} est en train d'écrire…",
  reconnecting: "Connexion perdue. Reconnexion…",
  restored: "Connexion rétablie.",
  ended: "La conversation est terminée.",
  endChat: "Terminer la conversation",
  newChat: "Nouvelle conversation",
  rateQuestion: "Comment s'est passée votre conversation ?",
  rateScore: "{n} sur 5",
  comment: "Commentaire (facultatif)",
  sendRating: "Envoyer la note",
  thanksRating: "Merci pour votre avis !",
  offlineTitle: "Nous sommes absents pour le moment",
  offlineText: "Laissez-nous un message et votre adresse e-mail, nous vous répondrons.",
  name: "Nom",
  email: "E-mail",
  message: "Message",
  sendOffline: "Envoyer le message",
  offlineSent: "Merci ! Nous avons reçu votre message et répondrons ici ou par e-mail.",
  emailInvalid: "Veuillez saisir une adresse e-mail valide.",
  messageRequired: "Veuillez écrire un message.",
  notAllowed: "Le chat n'est pas disponible sur ce site.",
  rateLimited: "Trop de requêtes. Réessayez dans {n} secondes.",
  error: "Une erreur s'est produite. Veuillez réessayer.",
  unread: "{n} messages non lus",
};

const TEXTS: Record<Lang, Texts> = { en, es, fr };
const SUPPORTED: Lang[] = ["en", "es", "fr"];

function base(tag: string): string {
  return tag.trim().toLowerCase().split(/[-_]/)[0] ?? "";
}

function isLang(v: string): v is Lang {
  return (SUPPORTED as string[]).includes(v);
}

/**
 * The language to show: the override when the widget knows it, else the first of the
 * browser's preferred languages that the tenant offers (any the widget knows when the tenant
 * lists none of them), else the tenant's first known language, else English.
 */
export function chooseLanguage(
  browser: readonly string[],
  tenant: readonly string[],
  override?: string | null,
): Lang {
  if (override && isLang(base(override))) return base(override) as Lang;
  const offered = tenant.map(base).filter(isLang);
  const allowed = offered.length > 0 ? offered : SUPPORTED;
  for (const tag of browser) {
    const b = base(tag);
    if (isLang(b) && allowed.includes(b)) return b;
  }
  return allowed[0] ?? "en";
}

/** The texts of `lang`, with `{name}` placeholders filled by `fmt`. */
export function texts(lang: Lang): Texts {
  return TEXTS[lang];
}

/** Fills `{key}` placeholders. */
export function fmt(template: string, values: Record<string, string | number>): string {
  return template.replace(/\{(\w+)\}/g, (m, k: string) =>
    k in values ? String(values[k]) : m,
  );
}

/** A wait in seconds as words; empty when unknown (0). */
export function waitText(t: Texts, seconds: number): string {
  if (!seconds || seconds <= 0) return "";
  if (seconds < 60) return t.lessThanMinute;
  return fmt(t.minutes, { n: Math.round(seconds / 60) });
}
